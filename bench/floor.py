"""The floor under every Runyard figure, on this machine: what NATS, Valkey and process
spawning cost before any Runyard code runs (DESIGN.md §9).

    python bench/floor.py [--n 2000] [--json bench/results/floor.json]

Measures, each one operation at a time:
- JetStream publish (with ack) → pull fetch → ack, on a stream of its own;
- one Valkey pipeline of HSET + XADD + EXPIRE;
- spawning `/bin/true` from asyncio and waiting for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis
from nats.js.errors import NotFoundError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report, running_stack, summary
from services import bus

STREAM, SUBJECT = "RY_BENCH_FLOOR", "ry.bench.floor"


async def jetstream_round_trip(url: str, n: int) -> list[float]:
    nc = await bus.connect(url, name="bench-floor")
    js = nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(name=STREAM, subjects=[SUBJECT])
    sub = await js.pull_subscribe(SUBJECT, durable="floor")
    times = []
    for i in range(n):
        start = time.perf_counter()
        await js.publish(SUBJECT, b"x" * 64, headers={"Nats-Msg-Id": str(i)})
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack()
        times.append(time.perf_counter() - start)
    await js.delete_stream(STREAM)
    await nc.close()
    return times


async def valkey_pipeline(url: str, n: int) -> list[float]:
    client = aioredis.from_url(url)
    times = []
    for i in range(n):
        start = time.perf_counter()
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset("ry:bench:h", mapping={"status": "running", "i": i})
            pipe.xadd("ry:bench:x", {"line": "x"}, maxlen=1000, approximate=True)
            pipe.expire("ry:bench:h", 60)
            await pipe.execute()
        times.append(time.perf_counter() - start)
    await client.delete("ry:bench:h", "ry:bench:x")
    await client.aclose()
    return times


async def spawn_true(n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("/bin/true")
        await proc.wait()
        times.append(time.perf_counter() - start)
    return times


async def measure(nats_url: str, redis_url: str, n: int) -> list[dict[str, float | str | int]]:
    return [
        summary("jetstream publish+fetch+ack", await jetstream_round_trip(nats_url, n)),
        summary("valkey pipeline (3 cmds)", await valkey_pipeline(redis_url, n)),
        summary("spawn /bin/true", await spawn_true(n)),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="operations per measure")
    parser.add_argument("--json", type=Path, default=Path("bench/results/floor.json"))
    args = parser.parse_args(argv)
    with running_stack() as stack:
        rows = asyncio.run(measure(stack.nats_url, stack.redis_url, args.n))
    report(rows, args.json)


if __name__ == "__main__":
    main()
