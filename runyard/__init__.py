"""Runyard's shared core: pipeline parsing and linting, the run engine, expressions, CLI.

Pure logic lives here so the dispatcher (services/) and the agent's local mode (agent/)
behave the same; nothing here imports services/ except the CLI entry module.
"""
