"""Cost per step as a run grows (DESIGN.md §9): one run of many one-step jobs, and
one job of many steps, on simulated agents that finish each step the moment it comes,
so the intervals between steps are the server's own cost per step."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from itertools import pairwise
from typing import Any

from bench.system import BenchSystem
from schemas.status import Status
from services.store import runs as store
from services.store.connection import connect

WINDOW = 20  # intervals averaged at each end


def add_pipeline(system: BenchSystem, project: str, name: str, jobs: int, steps: int) -> None:
    job = {"steps": [{"run": "true"} for _ in range(steps)]}
    source = {"name": name, "jobs": {f"j{j}": job for j in range(jobs)}}
    system.call("POST", f"/api/projects/{project}/pipelines", json={"source": json.dumps(source)})


async def _ended(redis_url: str, run_id: str, timeout: float) -> None:
    """Wait on the run's status in Valkey (polling the API would load the dispatcher's
    machine with the whole run's JSON many times a second), `timeout` at most."""
    r = connect(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = await r.hget(store.run_key(run_id), "status")
            if status is not None and Status(str(status)).final:
                return
            await asyncio.sleep(0.5)
    finally:
        await r.aclose()


def run_to_end(system: BenchSystem, project: str, name: str, timeout: float) -> dict[str, Any]:
    run_id = system.start_run(project, name)
    asyncio.run(_ended(system.stack.redis_url, run_id, timeout))
    run: dict[str, Any] = system.call("GET", f"/api/runs/{run_id}")
    return run


def ends(times: list[float]) -> tuple[list[float], list[float]]:
    """Intervals between consecutive times (sorted): the first WINDOW, the last WINDOW."""
    gaps = [b - a for a, b in pairwise(sorted(times))]
    return gaps[:WINDOW], gaps[-WINDOW:]


def measure(system: BenchSystem, project: str, jobs: int, steps: int) -> dict[str, Any]:
    """Per-step intervals near the start and the end of a wide run and a long job."""
    add_pipeline(system, project, "wide", jobs, 1)
    add_pipeline(system, project, "long", 1, steps)
    wide = run_to_end(system, project, "wide", 60 + jobs * 0.5)
    long = run_to_end(system, project, "long", 60 + steps * 0.5)
    return {
        "wide": _summary(wide, [j["finished_at"] for j in wide["jobs"]]),
        "long": _summary(long, [s["started_at"] for s in long["jobs"][0]["steps"]]),
    }


def _summary(run: dict[str, Any], times: list[float]) -> dict[str, Any]:
    first, last = ends(times)
    return {"status": run["status"], "done": _done(run), "first": first, "last": last}


def _done(run: dict[str, Any]) -> int:
    return sum(s["status"] == Status.SUCCESS for j in run["jobs"] for s in j["steps"])


def mean_ms(gaps: list[float]) -> float:
    return statistics.fmean(gaps) * 1000 if gaps else 0.0
