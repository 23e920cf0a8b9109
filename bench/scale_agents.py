"""Many agents at once (DESIGN.md §9): a fleet of simulated agents (bench/fleet.py,
several processes) created through the API as `runyard agent create` does, and
placement measured while they all heartbeat."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from agent.config import AgentConfig, agent_environment
from bench.fleet import write_configs
from bench.system import BenchSystem
from services.stack import die_with_parent
from services.store import runs as store
from services.store.connection import connect

FLEET = Path(__file__).resolve().parent / "fleet.py"
Received = list[tuple[str, str, str, int, float, float]]  # …, received at, stored at
ONLINE_WAIT = 300.0  # seconds, once every fleet process has connected its agents


def create_agents(system: BenchSystem, project: str, n: int) -> list[AgentConfig]:
    configs = []
    for i in range(n):
        made = system.call("POST", "/api/agents", json={"name": f"sim{i}", "projects": [project]})
        configs.append(
            AgentConfig(made["id"], f"sim{i}", made["token"], made["nats_url"], made["ca"])
        )
    return configs


async def _online(redis_url: str) -> int:
    r = connect(redis_url)
    try:
        return int(await r.zcount(store.ONLINE, time.time() - 30, "+inf"))
    finally:
        await r.aclose()


class Fleet:
    """The fleet's processes; `received` holds what their agents got, once stopped."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []
        self.received: Received = []
        self.online = 0  # agents the dispatcher had online when the fleet was started

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, out in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if out.exists():
                self.received += [tuple(r) for r in json.loads(out.read_text())]
        self.procs = []


@contextmanager
def fleet(
    system: BenchSystem, configs: list[AgentConfig], processes: int
) -> Iterator[tuple[Fleet, float]]:
    """Start the agents (`processes` of them, sharing the agents) and wait until the
    dispatcher has every one online (ONLINE_WAIT at most: the bench goes on with those
    that are); the fleet, and the seconds that took."""
    began = time.monotonic()
    running = Fleet()
    parent = os.getpid()
    try:
        for k in range(processes):
            mine = configs[k::processes]
            spec, out = system.tmp / f"fleet-{k}.json", system.tmp / f"fleet-{k}.out.json"
            write_configs(mine, spec)
            proc = subprocess.Popen(
                [sys.executable, str(FLEET), str(spec), str(out)],
                stdout=subprocess.PIPE,
                stderr=(system.tmp / f"fleet-{k}.log").open("w"),
                text=True,
                env=agent_environment(system.env),
                preexec_fn=lambda: die_with_parent(parent),
            )
            running.procs.append((proc, out))
        for proc, _ in running.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a fleet process did not start (see {system.tmp})")
        deadline = time.monotonic() + ONLINE_WAIT
        while time.monotonic() < deadline:
            running.online = asyncio.run(_online(system.stack.redis_url))
            if running.online >= len(configs):
                break
            time.sleep(1)
        yield running, time.monotonic() - began
    finally:
        running.stop()


class Usage:
    """CPU (% of one core) of the dispatcher, nats-server and valkey-server from when
    made until `since()`, and the dispatcher's memory (MiB RSS) then."""

    def __init__(self, system: BenchSystem) -> None:
        self.procs = {
            "dispatcher": psutil.Process(system.procs[0].pid),  # BenchSystem starts it first
            **{s.name: psutil.Process(s.process.pid) for s in system.stack.servers if s.process},
        }
        self.began = time.monotonic()
        self.before = {name: p.cpu_times() for name, p in self.procs.items()}

    def since(self) -> dict[str, float]:
        seconds = time.monotonic() - self.began
        found = {"seconds": seconds}
        for name, p in self.procs.items():
            after, before = p.cpu_times(), self.before[name]
            used = (after.user - before.user) + (after.system - before.system)
            found[f"{name}_cpu_pct"] = used / seconds * 100
        found["dispatcher_rss_mib"] = self.procs["dispatcher"].memory_info().rss / (1 << 20)
        return found


Submitted = dict[str, tuple[float, float]]


def submit_runs(system: BenchSystem, project: str, runs: int, rate: float) -> Submitted:
    """Start `runs` one-step runs, `rate` a second; run id → when its API call began
    and when it returned."""
    source = {"name": "place", "jobs": {"a": {"steps": [{"run": "true"}]}}}
    system.call("POST", f"/api/projects/{project}/pipelines", json={"source": json.dumps(source)})
    submitted = {}
    start = time.monotonic()
    for i in range(runs):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        before = time.time()
        run = system.start_run(project, "place")
        submitted[run] = (before, time.time())
    return submitted


def placement_latency(submitted: Submitted, received: Received) -> list[float]:
    """API call → `job.assign` received, per run (runs never assigned are left out)."""
    assigned = {run: at for kind, run, _, _, at, _ in received if kind == "job.assign"}
    return [assigned[run] - at for run, (at, _) in submitted.items() if run in assigned]


async def _created(redis_url: str, runs: list[str]) -> list[float]:
    r = connect(redis_url)
    try:
        return [float(await r.hget(store.run_key(run), "created_at") or 0) for run in runs]
    finally:
        await r.aclose()


def slowest(
    system: BenchSystem, submitted: Submitted, received: Received, n: int = 5
) -> list[dict[str, float]]:
    """Where the `n` slowest placements spent their time (ms): the API call, API call →
    the run created by the dispatcher, run created → `job.assign` stored in the agent's
    inbox stream (the dispatcher's commit and send), stored → received by the agent."""
    assigned = {run: at for kind, run, _, _, at, _ in received if kind == "job.assign"}
    stored = {run: at for kind, run, _, _, _, at in received if kind == "job.assign"}
    order = list(submitted)
    runs = sorted(assigned.keys() & submitted.keys(), key=lambda r: submitted[r][0] - assigned[r])
    runs = runs[:n]
    created = asyncio.run(_created(system.stack.redis_url, runs))
    found = []
    for run, made in zip(runs, created, strict=True):
        before, after = submitted[run]
        found.append(
            {
                "submitted": order.index(run),
                "total_ms": (assigned[run] - before) * 1000,
                "api_ms": (after - before) * 1000,
                "to_created_ms": (made - before) * 1000,
                "created_to_stored_ms": (stored[run] - made) * 1000,
                "stored_to_received_ms": (assigned[run] - stored[run]) * 1000,
            }
        )
    return found
