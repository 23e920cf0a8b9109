"""Dispatch speed through the whole system, on the embedded stack (DESIGN.md §9).

    python bench/dispatch.py [--runs 200] [--steps 200] [--json bench/results/dispatch.json]

Measures, with real dispatcher, web API and agent processes:
- latency: API call → the first step's process running (its first line reads
  `$EPOCHREALTIME`), one run at a time on an idle system;
- per-step overhead: one job of N `true` steps, against the same N commands in one
  bash process (the baseline, side by side), and the CPU time the agents' own
  processes spent per step meanwhile (what load on the machine does not inflate);
- throughput: trivial steps per second with 4 agents of one slot each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peer
from bench.common import Target, report, summary, targets
from bench.system import BenchSystem, bench_project


def _pipeline(
    system: BenchSystem, project: str, name: str, steps: list[str], jobs: int = 1
) -> None:
    body = [f"name: {name}", "jobs:"]
    for j in range(jobs):
        body += [f"  j{j}:", "    steps:"]
        body += [f"      - run: {json.dumps(step)}" for step in steps]
    system.call("POST", f"/api/projects/{project}/pipelines", json={"source": "\n".join(body)})


def latency(system: BenchSystem, project: str, runs: int, tmp: Path) -> list[float]:
    marker = tmp / "started"
    _pipeline(system, project, "latency", [f'echo "$EPOCHREALTIME" >> {marker}'])
    seconds = []
    for i in range(runs):
        before = time.time()
        run_id = system.start_run(project, "latency")
        system.wait_run(run_id)
        started = float(marker.read_text().splitlines()[i])
        seconds.append(started - before)
    return seconds


def cpu_seconds(pids: list[int]) -> float:
    """User and system time of these processes so far (not of their children)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def step_overhead(system: BenchSystem, project: str, steps: int) -> tuple[float, float, float]:
    """(seconds for the job's steps in Runyard, seconds for the same in one bash, agent
    CPU seconds meanwhile)."""
    _pipeline(system, project, "overhead", ["true"] * steps)
    agents = list(system.agent_pids.values())
    cpu = cpu_seconds(agents)
    run = system.wait_run(system.start_run(project, "overhead"))
    cpu = cpu_seconds(agents) - cpu
    job = run["jobs"][0]
    runyard = job["steps"][-1]["finished_at"] - job["steps"][0]["started_at"]
    script = "\n".join(["true"] * steps)
    began = time.perf_counter()
    subprocess.run(["bash", "--noprofile", "--norc", "-c", script], check=True)
    return runyard, time.perf_counter() - began, cpu


def throughput(system: BenchSystem, project: str, runs: int, steps: int) -> tuple[int, float]:
    _pipeline(system, project, "throughput", ["true"] * steps)
    began = time.perf_counter()
    ids = [system.start_run(project, "throughput") for _ in range(runs)]
    for run_id in ids:
        assert system.wait_run(run_id)["status"] == "success"
    return runs * steps, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs for the latency")
    parser.add_argument("--steps", type=int, default=200, help="steps for the overhead")
    parser.add_argument("--throughput-runs", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--peer", type=int, default=0, metavar="RUNS", help="then Celery beside it (bench/peer.py)"
    )
    args = parser.parse_args()
    with bench_project() as (system, project, tmp):
        for i in range(4):
            system.agent(f"agent{i}-{project}", project)
        seconds = latency(system, project, args.runs, tmp)
        runyard, shell, cpu = step_overhead(system, project, args.steps)
        done, took = throughput(system, project, args.throughput_runs, 25)
        timed = peer.compare(system, project, tmp, args.peer) if args.peer else {}
    rows = [
        summary("API call → first step running", seconds),
        {
            "name": f"{args.steps} steps in one job",
            "n": args.steps,
            "p50_ms": runyard / args.steps * 1000,
            "p99_ms": runyard / args.steps * 1000,
            "per_s": args.steps / runyard,
        },
        {
            "name": f"{args.steps} commands in one bash",
            "n": args.steps,
            "p50_ms": shell / args.steps * 1000,
            "p99_ms": shell / args.steps * 1000,
            "per_s": args.steps / shell,
        },
        {
            "name": "per-step overhead",
            "n": args.steps,
            "p50_ms": (runyard - shell) / args.steps * 1000,
            "p99_ms": (runyard - shell) / args.steps * 1000,
            "per_s": 0.0,
        },
        {
            "name": "throughput, 4 agents",
            "n": done,
            "p50_ms": took / done * 1000,
            "p99_ms": took / done * 1000,
            "per_s": done / took,
        },
    ]
    peer_rows, ratio = peer.ratios(timed) if timed else ([], "")
    report(rows + peer_rows, args.json)
    print(
        "(per-step rows: ms per step, the same figure in both columns;"
        " throughput: trivial steps per second)"
    )
    print(f"agent CPU per step: {cpu / args.steps * 1000:.3f} ms (the agents' own processes)")
    if ratio:
        print(f"{ratio} (Runyard and Celery rows: seconds per run, {args.peer} runs each)")
    first, overhead, rate = rows[0], rows[3], rows[4]
    targets(
        [
            Target("API call → first step running, p50", float(first["p50_ms"]), "ms", 5),
            Target("API call → first step running, p99", float(first["p99_ms"]), "ms", 20),
            Target("per-step overhead", float(overhead["p50_ms"]), "ms", 2),
            Target("throughput, 4 agents", float(rate["per_s"]), "/s", 1000, at_most=False),
        ]
    )


if __name__ == "__main__":
    main()
