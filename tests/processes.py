"""Checking on processes from tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, waiting to be reaped) counts as gone."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):  # gone, even between the two looks
        return False
    return state != "Z"


def wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to `timeout` seconds for all to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def sleeping(seconds: int) -> list[int]:
    """Host pids of `sleep <seconds>` processes (the tests' sleeps have unusual lengths):
    a sandboxed step's `$$` and `$!` are pids of its job's own PID namespace."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == ["sleep", str(seconds)]:
            found.append(proc.pid)
    return found
