"""Webhook intake, on the embedded stack (DESIGN.md §9).

    python bench/webhooks.py [--hooks 5000] [--concurrency 32] [--workers 2]
                             [--json bench/results/webhooks.json]

A separate process fires signed GitHub push deliveries (GitHub's own push example, a
new delivery id each) at the trigger service over loopback, `--concurrency` keep-alive
connections at a time, with a raw HTTP/1.1 client (httpx cost the generator several
times the trigger's own CPU per request). Each request's latency ends at the 202, sent
once JetStream stored the event. Two bursts: one while the dispatcher makes the runs
(the whole system), one with the dispatcher paused (the trigger alone), after which the
dispatcher is resumed and the runs it makes from that backlog are timed. Then every
accepted delivery must have become exactly one run. CPU per hook is read from /proc for
every process, so the share each one takes of the two cores shows even when the
machine is busy with other work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Target, report, summary, targets
from bench.system import BenchSystem, bench_project
from runyard import aio
from services.stack import free_port
from services.store.connection import connect
from services.store.runs import history_key, run_id_for
from services.trigger.hosts import event_id
from services.trigger.signatures import hex_hmac

PAYLOAD = (
    Path(__file__).resolve().parent.parent
    / "tests/fixtures/webhooks/github/push.branch-created.json"
)
SECRET = "bench-secret-of-some-length"
PIPELINE = "On push"
TICK = os.sysconf("SC_CLK_TCK")


async def _connection(
    port: int, path: str, deliveries: list[str], latencies: list[float], accepted: list[str]
) -> None:
    """One keep-alive connection sending deliveries until none are left."""
    body = PAYLOAD.read_bytes()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={hex_hmac(SECRET, body)}\r\n"
        f"Content-Length: {len(body)}\r\nX-GitHub-Delivery: "
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while deliveries:
        delivery = deliveries.pop()
        began = time.perf_counter()
        writer.write(head + delivery.encode() + b"\r\n\r\n" + body)
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - began)
        if status.split(b" ", 2)[1] == b"202":
            accepted.append(delivery)
    writer.close()


async def fire(port: int, path: str, hooks: int, concurrency: int) -> dict[str, object]:
    deliveries = [str(uuid.uuid4()) for _ in range(hooks)]
    latencies: list[float] = []
    accepted: list[str] = []
    began = time.perf_counter()
    await asyncio.gather(
        *(
            _connection(port, path, deliveries, latencies, accepted)
            for _ in range(min(concurrency, hooks))
        )
    )
    took = time.perf_counter() - began
    return {"latencies": latencies, "accepted": accepted, "seconds": took}


def _fire_in_another_process(
    port: int, path: str, hooks: int, concurrency: int
) -> tuple[dict[str, object], float]:
    """The burst's results (in a file: once, under heavy load, the same ~100 kB read
    from the firing process's stdout arrived corrupted) and that process's CPU seconds."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        argv = [sys.executable, __file__, "--fire", f"{port}{path}", "--json", out.name]
        argv += ["--hooks", str(hooks), "--concurrency", str(concurrency)]
        subprocess.run(argv, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result: dict[str, object] = json.loads(Path(out.name).read_bytes())
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result, cpu


def cpu_seconds(pid: int) -> float:
    """CPU seconds used by `pid` and its live descendants (the trigger's workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or _descends(int(fields[1]), pid):
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _descends(parent: int, ancestor: int) -> bool:
    while parent > 1:
        if parent == ancestor:
            return True
        try:
            parent = int(Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


async def _runs(system: BenchSystem, project: str, want: int) -> int:
    """Runs in the pipeline's history once `want` exist (or after 60 s)."""
    r = connect(system.stack.redis_url)
    try:
        for _ in range(12_000):
            count = int(await r.zcard(history_key(project, PIPELINE)))
            if count >= want:
                return count
            await asyncio.sleep(0.005)
        return int(await r.zcard(history_key(project, PIPELINE)))
    finally:
        await r.aclose()


async def _matched(system: BenchSystem, project: str, accepted: list[str]) -> int:
    """Accepted deliveries whose own run exists."""
    r = connect(system.stack.redis_url)
    try:
        async with r.pipeline(transaction=False) as p:
            for delivery in accepted:
                event = event_id("github", {"x-github-delivery": delivery}, b"", project, None)
                p.exists(f"ry:run:{run_id_for(event, project, PIPELINE)}")
            return sum(int(x) for x in await p.execute())
    finally:
        await r.aclose()


def _burst(
    pids: dict[str, int], port: int, path: str, hooks: int, concurrency: int
) -> tuple[dict[str, object], dict[str, float]]:
    """A burst's results, and the CPU seconds each process spent during it."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result, generator = _fire_in_another_process(port, path, hooks, concurrency)
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    return result, {**spent, "load generator": generator}


def _start(system: BenchSystem, project: str, workers: int) -> tuple[int, str, int]:
    """(port, path, pid) of a trigger service taking the project's signed pushes."""
    port = free_port()
    trigger = system.service("trigger", "--port", str(port), "--workers", str(workers))
    system.call("PUT", f"/api/projects/{project}/webhook", json={"secret": SECRET})
    source = {
        "name": PIPELINE,
        "triggers": {"push": {}},
        "jobs": {"a": {"steps": [{"run": "true"}]}},
    }
    system.call("POST", f"/api/projects/{project}/pipelines", json={"source": json.dumps(source)})
    path = f"/hooks/github/{project}"
    url = f"http://127.0.0.1:{port}{path}"
    system.wait_until(lambda: httpx.post(url).status_code == 400, "trigger service")
    return port, path, trigger.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hooks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="trigger processes")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--fire", default=None, help=argparse.SUPPRESS)  # the firing process
    args = parser.parse_args()
    if args.fire:
        port, _, path = args.fire.partition("/")
        result = aio.run(fire(int(port), "/" + path, args.hooks, args.concurrency))
        args.json.write_text(json.dumps(result))
        return
    rows: list[dict[str, float | str | int]] = []
    cpu: dict[str, dict[str, float]] = {}
    accepted: list[str] = []
    with bench_project() as (system, project, _):
        port, path, trigger = _start(system, project, args.workers)
        dispatcher = system.procs[0].pid
        servers = {s.name: s.process.pid for s in system.stack.servers if s.process}
        pids = {"trigger": trigger, "dispatcher": dispatcher, **servers}
        for name, paused in (("with dispatcher", False), ("trigger alone", True)):
            if paused:
                os.kill(dispatcher, signal.SIGSTOP)
            try:
                results, cpu[name] = _burst(pids, port, path, args.hooks, args.concurrency)
            finally:
                os.kill(dispatcher, signal.SIGCONT)
            done = list(results["accepted"])  # type: ignore[call-overload]
            accepted += done
            row = summary(f"push → 202, {name}", list(results["latencies"]))  # type: ignore[call-overload]
            row["per_s"] = len(done) / float(results["seconds"])  # type: ignore[arg-type]
            rows.append(row)
            before = {k: cpu_seconds(pid) for k, pid in pids.items() if k != "trigger"}
            began = time.perf_counter()
            runs = asyncio.run(_runs(system, project, len(accepted)))
            took = time.perf_counter() - began
            if paused:
                cpu["runs from the backlog"] = {
                    k: cpu_seconds(pids[k]) - spent for k, spent in before.items()
                }
                rows.append(
                    {
                        "name": "runs made from the backlog",
                        "n": len(done),
                        "p50_ms": 0.0,
                        "p99_ms": 0.0,
                        "per_s": len(done) / took,
                    }
                )
        matched = asyncio.run(_matched(system, project, accepted))
    report(rows, args.json)
    print(
        f"(per s: accepted hooks, or runs made, per second; {args.concurrency} in flight, "
        f"{args.workers} trigger processes)"
    )
    for name, spent in cpu.items():
        shares = ", ".join(f"{k} {v * 1000 / args.hooks:.2f}" for k, v in spent.items())
        print(f"CPU ms per hook, {name}: {shares}")
    print(
        f"accepted {len(accepted)} of {2 * args.hooks}; runs made {runs}; "
        f"deliveries with exactly their run: {matched}"
    )
    alone, made = rows[1], rows[2]  # the trigger alone; runs made from its backlog
    targets(
        [
            Target("webhooks accepted, trigger alone", float(alone["per_s"]), "/s", 2000, False),
            Target("runs made from webhooks", float(made["per_s"]), "/s", 2000, False),
        ]
    )
    if not (len(accepted) == 2 * args.hooks == runs == matched):
        sys.exit("not every accepted delivery became exactly one run")


if __name__ == "__main__":
    main()
