"""Runyard at scale, on the embedded stack (DESIGN.md §9, issue #14).

    python bench/scale.py [--agents 1000] [--runs 200] [--jobs 1000] [--steps 1000]
                          [--schedules 10000] [--json bench/results/scale.json]

- agents: simulated agents (bench/fleet.py, several per process), each a real NATS
  connection admitted through the auth callout with its own identity and inbox
  consumer, heartbeating every 5 s; one-step runs are started through the API at a
  steady rate, and placement latency is API call → `job.assign` received by an agent;
  the dispatcher's CPU and memory are read with psutil, idle and while placing;
- steps (same fleet): a run of `--jobs` one-step jobs, and a job of `--steps` steps;
  intervals between consecutive steps at the start and at the end of each, which must
  stay flat as the run grows;
- schedules (a fresh stack): `--schedules` cron schedules all due in the same second,
  two scheduler replicas; each tick's lateness, duplicates and misses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import scale_agents, scale_schedules, scale_steps
from bench.common import report, summary
from bench.system import bench_project

Row = dict[str, float | str | int]


def agents(args: argparse.Namespace) -> tuple[Row, dict[str, Any]]:
    with bench_project() as (system, project, _):
        configs = scale_agents.create_agents(system, project, args.agents)
        with scale_agents.fleet(system, configs, args.processes) as (fleet, took):
            usage = scale_agents.Usage(system)
            time.sleep(args.idle)
            idle = usage.since()
            usage = scale_agents.Usage(system)
            submitted = scale_agents.submit_runs(system, project, args.runs, args.rate)
            time.sleep(5)  # for the last ones to be placed
            placing = usage.since()
        latency = scale_agents.placement_latency(submitted, fleet.received)
        slowest = scale_agents.slowest(system, submitted, fleet.received)
    facts = {
        "agents": args.agents,
        "online": fleet.online,
        "connected_s": took,
        "idle": idle,
        "placing": placing,
        "runs": args.runs,
        "placed": len(latency),
        "slowest": slowest,  # where the five slowest placements spent their time
    }
    return summary(f"placement, {args.agents} agents", latency), facts


def steps(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    with bench_project() as (system, project, _):
        configs = scale_agents.create_agents(system, project, args.step_agents)
        with scale_agents.fleet(system, configs, 1):
            found = scale_steps.measure(system, project, args.jobs, args.steps)
    rows: list[Row] = []
    shapes = (("wide", f"run of {args.jobs} jobs"), ("long", f"job of {args.steps} steps"))
    for kind, what in shapes:
        for end, where in (("first", "start"), ("last", "end")):
            rows.append(summary(f"{what}, at its {where}", found[kind][end]))
    return rows, found


def schedules(args: argparse.Namespace) -> tuple[Row, dict[str, Any]]:
    with bench_project() as (system, project, _):
        cron = scale_schedules.run(system, project, args.schedules, args.lead)
    late: list[float] = cron.pop("late")
    row = summary(f"cron lateness, {args.schedules}", late)
    cron["late_max_ms"] = max(late) * 1000 if late else 0.0
    return row, cron


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    # 125 simulated agents a process: with 250 (four processes), an agent's process
    # took 0.6-3 s to receive a job.assign JetStream had stored at times, which made
    # the placement p99 (the server's own part stayed within tens of ms)
    parser.add_argument("--processes", type=int, default=8, help="fleet processes")
    parser.add_argument("--idle", type=float, default=15.0, help="seconds of heartbeats only")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="runs started per second")
    parser.add_argument("--step-agents", type=int, default=20, help="agents for the steps")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--lead", type=float, default=120.0, help="seconds to load schedules")
    parser.add_argument("--parts", default="agents,steps,schedules", help="which to run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows: list[Row] = []
    facts: dict[str, Any] = {}
    cron: dict[str, Any] = {}
    if "agents" in args.parts:
        row, facts = agents(args)
        rows.append(row)
    if "steps" in args.parts:
        step_rows, facts["steps"] = steps(args)
        rows += step_rows
    if "schedules" in args.parts:
        cron_row, cron = schedules(args)
        rows.append(cron_row)
    report(rows, args.json)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "agents": facts, "cron": cron}))
    print(
        "(placement: API call → job.assign received; 'at its start/end': ms between"
        " consecutive steps, first and last 20)"
    )
    print(json.dumps({"agents": facts | {"steps": None}, "cron": cron}, indent=1))
    problems = scale_problems(args, facts, cron)
    if problems:
        sys.exit("; ".join(problems))


def scale_problems(
    args: argparse.Namespace, facts: dict[str, Any], cron: dict[str, Any]
) -> list[str]:
    """What went wrong, as opposed to what was slow."""
    problems = []
    if "placed" in facts and facts["placed"] != args.runs:
        problems.append(f"{facts['placed']} of {args.runs} runs placed")
    for kind in ("wide", "long") if "steps" in facts else ():
        run = facts["steps"][kind]
        if run["status"] != "success":
            problems.append(f"the {kind} run ended {run['status']}")
    if cron and (cron["duplicates"] or cron["missed"]):
        problems.append(f"cron: {cron['duplicates']} duplicates, {cron['missed']} missed")
    return problems


if __name__ == "__main__":
    main()
