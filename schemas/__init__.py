"""Runyard's contracts: the pipeline and action files, every NATS message, every name.

This package imports nothing else of Runyard's, so the agent, the services and
third-party tools can all depend on it.
"""
