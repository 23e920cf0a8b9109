"""Webhook intake, on the embedded stack (DESIGN.md §9).

    python bench/webhooks.py [--hooks 5000] [--concurrency 32] [--json bench/results/webhooks.json]

A separate process fires signed GitHub push deliveries (GitHub's own push example, a
new delivery id each) at the trigger service over loopback, `--concurrency` at a time;
the figures are accepted hooks per second and each request's latency (answered 202
once JetStream stored the event). Then it checks that every accepted delivery became
exactly one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report, summary
from bench.system import BenchSystem, bench_project
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


async def fire(url: str, hooks: int, concurrency: int) -> dict[str, object]:
    body = PAYLOAD.read_bytes()
    signature = "sha256=" + hex_hmac(SECRET, body)
    deliveries = [str(uuid.uuid4()) for _ in range(hooks)]
    latencies: list[float] = []
    accepted: list[str] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for d in deliveries:
        queue.put_nowait(d)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            delivery = queue.get_nowait()
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signature,
            }
            began = time.perf_counter()
            response = await client.post(url, content=body, headers=headers)
            latencies.append(time.perf_counter() - began)
            if response.status_code == 202:
                accepted.append(delivery)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        took = time.perf_counter() - began
    return {"latencies": latencies, "accepted": accepted, "seconds": took}


def _fire_in_another_process(url: str, hooks: int, concurrency: int) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--fire",
            url,
            "--hooks",
            str(hooks),
            "--concurrency",
            str(concurrency),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def _runs(system: BenchSystem, project: str, accepted: list[str]) -> tuple[int, int]:
    """(runs in the pipeline's history, accepted deliveries with their run), waiting for
    the dispatcher to catch up."""
    r = connect(system.stack.redis_url)
    try:
        for _ in range(1200):  # up to 60 s
            count = int(await r.zcard(history_key(project, "On push")))
            if count >= len(accepted):
                break
            await asyncio.sleep(0.05)
        async with r.pipeline(transaction=False) as p:
            for delivery in accepted:
                event = event_id("github", {"x-github-delivery": delivery}, b"", project, None)
                p.exists(f"ry:run:{run_id_for(event, project, 'On push')}")
            found = sum(int(x) for x in await p.execute())
        return int(await r.zcard(history_key(project, "On push"))), found
    finally:
        await r.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hooks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--fire", default=None, help=argparse.SUPPRESS)  # the firing process
    args = parser.parse_args()
    if args.fire:
        print(json.dumps(asyncio.run(fire(args.fire, args.hooks, args.concurrency))))
        return
    with bench_project() as (system, project, _):
        port = free_port()
        system.service("trigger", "--port", str(port))
        system.call("PUT", f"/api/projects/{project}/webhook", json={"secret": SECRET})
        source = {
            "name": "On push",
            "triggers": {"push": {}},
            "jobs": {"a": {"steps": [{"run": "true"}]}},
        }
        system.call(
            "POST", f"/api/projects/{project}/pipelines", json={"source": json.dumps(source)}
        )
        url = f"http://127.0.0.1:{port}/hooks/github/{project}"
        system.wait_until(lambda: httpx.post(url).status_code == 400, "trigger service")
        result = _fire_in_another_process(url, args.hooks, args.concurrency)
        accepted = list(result["accepted"])  # type: ignore[call-overload]
        runs, matched = asyncio.run(_runs(system, project, accepted))
    latencies = list(result["latencies"])  # type: ignore[call-overload]
    seconds = float(result["seconds"])  # type: ignore[arg-type]
    row = summary("signed GitHub push → 202", latencies)
    row["per_s"] = len(accepted) / seconds
    report([row], args.json)
    print(
        f"(per s: accepted hooks per second, {args.concurrency} in flight)\n"
        f"accepted {len(accepted)} of {args.hooks}; runs made {runs}; "
        f"deliveries with exactly their run: {matched}"
    )
    if not (len(accepted) == args.hooks == runs == matched):
        sys.exit("not every accepted delivery became exactly one run")


if __name__ == "__main__":
    main()
