"""Running a long-lived service (the dispatcher) on uvloop where it is installed: the
same asyncio API with a faster loop and sockets. Not the agent: uvloop spawns
processes slower than asyncio's own loop (bench/dispatch.py shows it)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the standard loop
        return asyncio.run(main)
    return uvloop.run(main)
