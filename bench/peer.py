"""Runyard beside a well-known peer, Celery, on the same trivial pipelines, in one run.

    python bench/peer.py [--runs 30] [--json bench/results/peer.json]

Two pipelines, each run `--runs` times one at a time: one step `true`, and twenty
steps `true` one after another in one job. Runyard runs them on the embedded stack
(dispatcher, web API, one agent with one slot), started through the REST API; then,
with Runyard's processes stopped, Celery runs them on the same Valkey (broker and
result backend) with one worker of one child, as a chain of tasks that each run the
command in bash (bench/peer_celery.py). Each run is timed from the call that starts it
to the end its own system recorded (Runyard: the run's `finished_at`; Celery: the last
task's `date_done`), so neither side's way of noticing the end is counted. The ratio is
Runyard's median over Celery's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peer_celery
from bench.common import report, summary
from bench.system import BenchSystem, bench_project

PIPELINES = {"1 step": 1, "20 steps": 20}
WHO = ("Runyard", "Celery")
WARM_UP = 2  # runs per pipeline first, not timed (imports, first connections)


def _runyard(system: BenchSystem, project: str, steps: int, runs: int) -> list[float]:
    name = f"peer-{steps}"
    source = {"name": name, "jobs": {"a": {"steps": [{"run": "true"}] * steps}}}
    system.call("POST", f"/api/projects/{project}/pipelines", json={"source": json.dumps(source)})
    seconds = []
    for i in range(WARM_UP + runs):
        began = time.time()
        run = system.wait_run(system.start_run(project, name))
        if run["status"] != "success":
            raise RuntimeError(f"Runyard's {name} run ended {run['status']}")
        if i >= WARM_UP:
            seconds.append(float(run["finished_at"]) - began)
    return seconds


def _celery(steps: int, runs: int) -> list[float]:
    commands = ["true"] * steps
    timed = [peer_celery.run(commands) for _ in range(WARM_UP + runs)]
    return timed[WARM_UP:]


def compare(system: BenchSystem, project: str, tmp: Path, runs: int) -> dict[str, list[float]]:
    """Both pipelines through Runyard (the project's agents), then — with Runyard's
    processes stopped, so Celery gets the machine to itself as Runyard had — through
    Celery on the same Valkey: seconds of each timed run, by system and pipeline."""
    timed: dict[str, list[float]] = {}
    for label, steps in PIPELINES.items():
        timed[f"Runyard, {label}"] = _runyard(system, project, steps, runs)
    system.stop()
    peer_celery.use(system.stack.redis_url)
    with peer_celery.worker(system.stack.redis_url, tmp / "celery.log"):
        for label, steps in PIPELINES.items():
            timed[f"Celery, {label}"] = _celery(steps, runs)
    return timed


def ratios(timed: dict[str, list[float]]) -> tuple[list[dict[str, float | str | int]], str]:
    """The rows (Runyard's with its ratio, in the JSON too) and the ratio line."""
    rows = [summary(name, seconds) for name, seconds in timed.items()]
    said = []
    for label in PIPELINES:
        ours, theirs = (next(r for r in rows if r["name"] == f"{who}, {label}") for who in WHO)
        ours["vs_celery"] = float(ours["p50_ms"]) / float(theirs["p50_ms"])
        said.append(f"{label} {ours['vs_celery']:.1f}x")
    return rows, f"Runyard's median over Celery's: {', '.join(said)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each pipeline")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with bench_project() as (system, project, tmp):
        system.agent(f"agent-{project}", project)
        timed = compare(system, project, tmp, args.runs)
    rows, line = ratios(timed)
    report(rows, args.json)
    print("(per s: runs per second, one at a time)")
    print(line)


if __name__ == "__main__":
    main()
