"""Firing a busy second with two replicas, on real NATS and Valkey: each tick becomes
one event, the replicas split the publishing, and ticks a dead replica claimed are
published by the other after the fallback wait."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from schemas import subjects
from schemas.messages import TriggerEvent
from services.scheduler import firing
from services.scheduler.firing import Due, Firing
from services.scheduler.ticks import Entry

TICK = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


def busy_second(n: int) -> list[Due]:
    return [(Entry("p", f"s{i}", 0, "0 3 * * *", "UTC"), TICK) for i in range(n)]


async def stored(js: JetStreamContext) -> list[TriggerEvent]:
    sub = await js.subscribe(
        subjects.events("cron", "p"), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except TimeoutError:
            break
        found.append(TriggerEvent.model_validate_json(msg.data))
    await sub.unsubscribe()
    return found


def test_events_built_from_the_template_equal_the_model() -> None:
    due = [*busy_second(3), (Entry("q", "Nightly", 1, "0 3 * * *", "Europe/Berlin"), TICK)]
    for (subject, msg_id, data), (entry, tick) in zip(firing.encoded(due), due, strict=True):
        assert data == firing.event(entry, tick).encode()
        assert msg_id == firing.event(entry, tick).id
        assert subject == subjects.events("cron", entry.project)


async def test_two_replicas_publish_each_tick_once_between_them(
    nc: Client, js: JetStreamContext, redis: aioredis.Redis
) -> None:
    due = busy_second(1000)
    one, other = Firing(js, redis), Firing(js, redis)
    published = await asyncio.gather(one.fire(due), other.fire(due))
    assert sum(published) == len(due)  # neither published what the other had
    events = await stored(js)
    assert len(events) == len(due)
    assert set(Counter(e.pipeline for e in events).values()) == {1}
    assert {e.payload["scheduled_at"] for e in events} == {TICK.isoformat()}


async def test_ticks_claimed_by_a_replica_that_died_are_published_by_the_other(
    nc: Client, js: JetStreamContext, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firing, "FALLBACK", 0.1)
    due = busy_second(10)
    dead = Firing(js, redis)
    assert await dead._claimed(due[:4]) == {0, 1, 2, 3}  # claimed, then it died
    assert await Firing(js, redis).fire(due) == 10
    assert sorted(str(e.pipeline) for e in await stored(js)) == sorted(e.pipeline for e, _ in due)
