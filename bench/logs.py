"""Log throughput end to end, on the embedded stack (DESIGN.md §9).

    python bench/logs.py [--lines 1000000] [--json bench/results/logs.json]

One step prints N lines as fast as it can (`seq 1 N`); the figure is lines per second
from the step's start until the last line is stored in Valkey by the log collector,
beside the same command writing to /dev/null in one shell. It checks that every line
arrived once and in order, and samples the agent's resident memory meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Target, report, targets
from bench.system import BenchSystem, bench_project
from services.store.connection import connect, strdict
from services.store.logs import log_key, meta_key


class PeakMemory:
    """The highest RSS of one process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.idle = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def done(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


async def _check(redis_url: str, run: str, lines: int) -> tuple[bool, float]:
    """(every line once and in order, when the last one was stored)."""
    r = connect(redis_url)
    try:
        key = log_key(run, "j0", 1, "1")
        for _ in range(60_000):  # up to 10 minutes
            if await r.hget(meta_key(run, "j0", 1, "1"), "ended") == "1":
                break
            await asyncio.sleep(0.01)
        stored_at = time.time()
        expected, start = 1, "-"
        while True:
            entries = await r.xrange(key, start, "+", count=50_000)
            if not entries:
                break
            for entry_id, fields in entries:
                text = strdict(fields).get("x")
                if int(str(entry_id).split("-")[0]) != expected or text != str(expected):
                    return False, stored_at
                expected += 1
            start = f"({entries[-1][0]!s}"
        return expected == lines + 1, stored_at
    finally:
        await r.aclose()


def measure(system: BenchSystem, project: str, agent: str, lines: int) -> dict[str, float]:
    source = f'name: logs\njobs:\n  j0:\n    steps:\n      - run: "seq 1 {lines}"\n'
    system.call("POST", f"/api/projects/{project}/pipelines", json={"source": source})
    memory = PeakMemory(system.agent_pids[agent])
    run_id = system.start_run(project, "logs")
    run = system.wait_run(run_id, timeout=600)
    complete, stored_at = asyncio.run(_check(system.stack.redis_url, run_id, lines))
    peak = memory.done()
    started = run["jobs"][0]["steps"][0]["started_at"]
    return {
        "seconds": stored_at - started,
        "complete": float(complete),
        "idle_rss": memory.idle,
        "peak_rss": peak,
    }


def shell(lines: int) -> float:
    began = time.perf_counter()
    subprocess.run(["bash", "-c", f"seq 1 {lines} > /dev/null"], check=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with bench_project() as (system, project, _):
        agent = system.agent(f"logs-{project}", project)
        found = measure(system, project, agent, args.lines)
    if not found["complete"]:
        sys.exit("lines were lost, repeated or out of order")
    baseline = shell(args.lines)
    mib = 1 << 20
    rows = [
        {
            "name": "lines into Valkey",
            "n": args.lines,
            "p50_ms": found["seconds"] * 1000,
            "p99_ms": found["seconds"] * 1000,
            "per_s": args.lines / found["seconds"],
        },
        {
            "name": "same lines to /dev/null",
            "n": args.lines,
            "p50_ms": baseline * 1000,
            "p99_ms": baseline * 1000,
            "per_s": args.lines / baseline,
        },
    ]
    report(rows, args.json)
    print(
        f"(ms columns: the whole run; every line stored once, in order: yes)\n"
        f"agent memory: {found['idle_rss'] / mib:.1f} MiB idle, "
        f"{found['peak_rss'] / mib:.1f} MiB peak"
    )
    targets(
        [
            Target("log lines stored", args.lines / found["seconds"], "/s", 100_000, False),
            Target("agent idle RSS", found["idle_rss"] / mib, "MiB", 40),
        ]
    )


if __name__ == "__main__":
    main()
