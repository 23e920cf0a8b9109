"""Chaos, short form (`bench/chaos.py` runs it longer, one fault at a time): bursts of
multi-step runs with side effects while agents are killed and restarted, killed and
left down, stopped past the loss limit and resumed, and the dispatcher, the log
collector, nats-server and valkey-server are killed and started again.

The system under attack has its own stack (its servers are killed too), not the
session's. Every broken promise is listed at once rather than the first alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.chaos import Settings, report, run_chaos

pytestmark = pytest.mark.chaos

SHORT = Settings(runs=4, steps=4, lines=5, agents=3, slots=2)
RECOVERY = {"agent-down": 35.0, "agent-restart": 5.0}  # seconds, at most


def test_chaos_short(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_chaos(tmp_path, SHORT)
    took = time.monotonic() - started
    report(result, tmp_path / "chaos.json")  # the table, in the output of a failure
    rows = {row.fault: row for row in result.rows}
    broken = {
        "runs that never ended": result.unfinished,
        "side effects twice within an attempt": result.duplicates,
        "side effects lost from a successful run": result.lost,
        "stored logs not one execution's lines in order": result.bad_logs,
        "step processes left running": result.processes,
        "workspaces left behind": result.workspaces,
        "recovery too slow": [
            f"{fault}: {rows[fault].recovery_s} s > {limit} s"
            for fault, limit in RECOVERY.items()
            if rows[fault].recovery_s > limit
        ],
    }
    broken = {what: items for what, items in broken.items() if items}
    assert broken == {}, (took, [asdict(r) for r in result.rows])
    assert took < 150, took
