"""Cron at scale (DESIGN.md §9): many schedules due in the same second, fired by two
scheduler replicas; every tick must reach RY_EVENTS once, within a second of its time.

The pipelines are stored straight into Valkey (as the API's `save_pipeline` does) before
the replicas start, each with one daily schedule due `lead` seconds later, so the
replicas load them all at start. Lateness is the time JetStream stored a tick's event
(its stream timestamp) minus the tick's due second.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from nats.js.api import DeliverPolicy

from bench.system import BenchSystem
from schemas import subjects
from schemas.messages import TriggerEvent
from services import bus
from services.store import records
from services.store.connection import connect


def source(name: str, cron: str) -> str:
    """A one-step pipeline with one daily schedule (JSON, as the API also takes)."""
    spec = {
        "name": name,
        "triggers": {"schedule": [{"cron": cron}]},
        "jobs": {"a": {"steps": [{"run": "true"}]}},
    }
    return json.dumps(spec)


BATCH = 50  # pipelines written at once (within the client's connection pool)


async def store_pipelines(redis_url: str, project: str, n: int, due: datetime) -> None:
    cron = f"{due.second} {due.minute} {due.hour} * * *"
    r = connect(redis_url)
    try:
        for start in range(0, n, BATCH):
            await asyncio.gather(
                *(
                    records.save_pipeline(r, project, f"s{i}", source(f"s{i}", cron), "json")
                    for i in range(start, min(start + BATCH, n))
                )
            )
    finally:
        await r.aclose()


async def stored_ticks(nats_url: str, project: str, n: int, until: float) -> list[TriggerEvent]:
    """The cron events of `project` in RY_EVENTS once `n` are there (or at `until`),
    each with `created_at` replaced by the time JetStream stored it."""
    nc = await bus.connect(nats_url, name="bench-scale")
    found: list[TriggerEvent] = []
    try:
        js = nc.jetstream()
        subject = subjects.events("cron", project)
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        while len(found) < n and time.time() < until:
            try:
                msg = await sub.next_msg(timeout=max(0.1, min(1.0, until - time.time())))
            except TimeoutError:
                continue
            event = TriggerEvent.model_validate_json(msg.data)
            stored = msg.metadata.timestamp.timestamp()
            found.append(event.model_copy(update={"created_at": stored}))
        await asyncio.sleep(1.0)  # anything after the n-th is a duplicate: count it too
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                break
            event = TriggerEvent.model_validate_json(msg.data)
            stored = msg.metadata.timestamp.timestamp()
            found.append(event.model_copy(update={"created_at": stored}))
        await sub.unsubscribe()
    finally:
        await nc.close()
    return found


def run(
    system: BenchSystem, project: str, n: int, lead: float, pause_dispatcher: bool = False
) -> dict[str, Any]:
    """Fire `n` schedules due in the same second; lateness, duplicates and misses.
    `pause_dispatcher` stops the dispatcher (SIGSTOP) from a second before the ticks
    until all are stored, to tell the schedulers' and JetStream's share of the lateness
    from that of the runs the dispatcher makes of the events meanwhile."""
    due = datetime.fromtimestamp(int(time.time() + lead), UTC)
    began = time.time()
    asyncio.run(store_pipelines(system.stack.redis_url, project, n, due))
    stored = time.time() - began
    system.env["RUNYARD_LOG"] = "INFO"  # the production default: its cost counts
    logs = []
    for _ in range(2):
        logs.append(system.tmp / f"scheduler-{len(system.procs)}.log")  # BenchSystem.spawn's
        system.service("scheduler")
    ready = lambda: all("scheduler ready" in log.read_text() for log in logs)  # noqa: E731
    system.wait_until(ready, "both scheduler replicas", timeout=due.timestamp() - time.time())
    loaded = time.time() - began - stored
    dispatcher = system.procs[0]  # BenchSystem starts it first
    if pause_dispatcher:
        time.sleep(max(0.0, due.timestamp() - 1 - time.time()))
        os.killpg(dispatcher.pid, signal.SIGSTOP)
    try:
        until = due.timestamp() + 60
        events = asyncio.run(stored_ticks(system.stack.nats_url, project, n, until))
    finally:
        if pause_dispatcher:
            os.killpg(dispatcher.pid, signal.SIGCONT)
    fired_here = [line for log in logs for line in log.read_text().splitlines() if "due at" in line]
    per_entry = Counter(e.pipeline for e in events)
    late = [e.created_at - due.timestamp() for e in events]
    return {
        "schedules": n,
        "fired": len(per_entry),
        "duplicates": sum(c - 1 for c in per_entry.values()),
        "missed": n - len(per_entry),
        "late": late,
        "store_s": stored,
        "load_s": loaded,
        "replicas": [line.partition("INFO ")[2] for line in fired_here],
    }
