"""The run engine: pure logic shared by the dispatcher and local mode.

plan (matrix expansion, needs) → state (what happened) → machine (what to do next), with
expressions evaluated in a sandbox and scripts made injection-safe.
"""
