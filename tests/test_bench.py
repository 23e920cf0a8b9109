"""The benches' smoke runs, so they cannot rot (figures are never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.stack import Stack
from tests.conftest import ROOT


def run_bench(
    script: str, stack: Stack, out: Path, *args: str, timeout: float = 120
) -> list[dict[str, object]]:
    # each bench starts its own servers, with the credentials only that stack knows
    env = {
        k: v for k, v in os.environ.items() if k not in ("RUNYARD_NATS_URL", "RUNYARD_REDIS_URL")
    }
    done = subprocess.run(
        [sys.executable, f"bench/{script}", "--json", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "p50 ms" in done.stdout
    rows: list[dict[str, object]] = json.loads(out.read_text())
    return rows


def test_against_bench_smoke(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "against.json"
    small = ["HEAD", "--rounds", "1", "--", "floor.py", "--n", "10"]
    rows = run_bench("against.py", stack, out, *small, timeout=240)
    assert [r["name"] for r in rows] == [
        "jetstream publish+fetch+ack",
        "valkey pipeline (3 cmds)",
        "spawn /bin/true",
    ]
    assert all(len(r["p50_ms"]["other"]) == 1 for r in rows)  # type: ignore[index]


def test_floor_bench_smoke(stack: Stack, tmp_path: Path) -> None:
    rows = run_bench("floor.py", stack, tmp_path / "floor.json", "--n", "20")
    assert [r["name"] for r in rows] == [
        "jetstream publish+fetch+ack",
        "valkey pipeline (3 cmds)",
        "spawn /bin/true",
    ]
    assert all(r["n"] == 20 for r in rows)


def test_dispatch_bench_smoke(stack: Stack, tmp_path: Path) -> None:
    rows = run_bench(
        "dispatch.py",
        stack,
        tmp_path / "dispatch.json",
        "--runs",
        "5",
        "--steps",
        "10",
        "--throughput-runs",
        "2",
        "--peer",
        "1",
        timeout=240,
    )
    assert [r["name"] for r in rows] == [
        "API call → first step running",
        "10 steps in one job",
        "10 commands in one bash",
        "per-step overhead",
        "throughput, 4 agents",
        "Runyard, 1 step",
        "Runyard, 20 steps",
        "Celery, 1 step",
        "Celery, 20 steps",
    ]
    assert rows[0]["n"] == 5
    assert "vs_celery" in rows[5]  # the peer ratio, in the same run


def test_logs_bench_smoke(stack: Stack, tmp_path: Path) -> None:
    rows = run_bench("logs.py", stack, tmp_path / "logs.json", "--lines", "2000")
    assert [r["name"] for r in rows] == ["lines into Valkey", "same lines to /dev/null"]
    assert rows[0]["n"] == 2000


def test_webhooks_bench_smoke(stack: Stack, tmp_path: Path) -> None:
    rows = run_bench(
        "webhooks.py",
        stack,
        tmp_path / "webhooks.json",
        *("--hooks", "20", "--concurrency", "4", "--workers", "2"),
    )
    assert [r["name"] for r in rows] == [
        "push → 202, with dispatcher",
        "push → 202, trigger alone",
        "runs made from the backlog",
    ]
    assert all(r["n"] == 20 for r in rows)


def test_peer_bench_smoke(stack: Stack, tmp_path: Path) -> None:
    rows = run_bench("peer.py", stack, tmp_path / "peer.json", "--runs", "2")
    assert [r["name"] for r in rows] == [
        "Runyard, 1 step",
        "Runyard, 20 steps",
        "Celery, 1 step",
        "Celery, 20 steps",
    ]
    assert all(r["n"] == 2 for r in rows)
    assert all(float(r["vs_celery"]) > 0 for r in rows[:2])  # type: ignore[arg-type]


def test_chaos_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    small = ["--runs", "2", "--steps", "2", "--lines", "3", "--faults", "dispatcher,collector"]
    done = subprocess.run(
        [sys.executable, "bench/chaos.py", "--json", str(out), *small],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "duplicate effects" in done.stdout and "recovery s" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["fault"] for r in rows] == ["dispatcher", "collector"]
    assert all(r["runs"] == 2 for r in rows)


def test_scale_bench_smoke(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    small = ["--agents", "10", "--processes", "2", "--idle", "1", "--runs", "10", "--rate", "20"]
    small += ["--step-agents", "2", "--jobs", "10", "--steps", "10"]
    small += ["--schedules", "50", "--lead", "8"]
    run_bench("scale.py", stack, out, *small, timeout=240)
    found = json.loads(out.read_text())
    # correctness only: every run placed, every step done, each schedule fired once
    assert found["agents"]["placed"] == 10
    assert found["agents"]["steps"]["wide"]["done"] == 10
    assert found["agents"]["steps"]["long"]["done"] == 10
    cron = found["cron"]
    assert (cron["fired"], cron["duplicates"], cron["missed"]) == (50, 0, 0)
