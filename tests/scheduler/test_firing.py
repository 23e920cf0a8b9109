"""Firing a busy second with two replicas, on real NATS and Valkey: each tick becomes
one event, never before its second though claimed ahead; the replicas split the
publishing; ticks a dead replica claimed are published by the other after the fallback
wait; entries dropped before their second are not published, after it they are."""

from __future__ import annotations

import asyncio
import math
import time
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
from services.scheduler.firing import Batch, Due, Firing
from services.scheduler.ticks import Entry

TICK = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


def busy_second(n: int, tick: datetime = TICK) -> list[Due]:
    return [(Entry("p", f"s{i}", 0, "0 3 * * *", "UTC"), tick) for i in range(n)]


def coming_second(ahead: float) -> datetime:
    """A whole second at least `ahead` seconds from now."""
    return datetime.fromtimestamp(math.ceil(time.time() + ahead), UTC)


async def stored_at(js: JetStreamContext) -> list[tuple[TriggerEvent, float]]:
    """The cron events of project p, each with the time JetStream stored it."""
    sub = await js.subscribe(
        subjects.events("cron", "p"), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except TimeoutError:
            break
        found.append(
            (TriggerEvent.model_validate_json(msg.data), msg.metadata.timestamp.timestamp())
        )
    await sub.unsubscribe()
    return found


async def stored(js: JetStreamContext) -> list[TriggerEvent]:
    return [event for event, _ in await stored_at(js)]


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
    one, other = Firing(nc, redis), Firing(nc, redis)
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
    dead = Firing(nc, redis)
    assert await dead._claimed(due[:4]) == {0, 1, 2, 3}  # claimed, then it died
    assert await Firing(nc, redis).fire(due) == 10
    assert sorted(str(e.pipeline) for e in await stored(js)) == sorted(e.pipeline for e, _ in due)


def test_turns_start_away_from_each_other() -> None:
    assert [firing.turn_start(turn, 40) for turn in range(1, 6)] == [0, 20, 10, 30, 5]
    assert firing.turn_start(2, 1) == 0
    assert firing.turn_start(1, 0) == 0


async def test_two_replicas_claim_a_coming_second_ahead_split_it_and_publish_at_it(
    nc: Client, js: JetStreamContext, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firing, "FALLBACK", 0.5)
    tick = coming_second(1.5)
    due = busy_second(2000, tick)
    one, other = Firing(nc, redis), Firing(nc, redis)
    split = await asyncio.gather(one.split(Batch(due)), other.split(Batch(due)))
    assert time.time() < tick.timestamp()  # claimed before the second
    won = [{e.id for e, _ in mine} for mine, _ in split]
    assert won[0].isdisjoint(won[1]) and won[0] | won[1] == {e.id for e, _ in due}
    # claimed ahead, then both take the second again (as after an edit of every pipeline):
    # each wins back what it had claimed, and the events come at the second, once each
    again = await asyncio.gather(one.split(Batch(due)), other.split(Batch(due)))
    assert [{e.id for e, _ in mine} for mine, _ in again] == won
    published = await asyncio.gather(one.run(Batch(due)), other.run(Batch(due)))
    assert published[0] >= len(won[0]) and published[1] >= len(won[1])  # + the fallback's
    events = await stored_at(js)
    assert len(events) == len(due)
    assert set(Counter(e.pipeline for e, _ in events).values()) == {1}
    assert min(at for _, at in events) >= tick.timestamp()


async def test_a_batch_split_between_replicas_loses_none_when_one_dies(
    nc: Client, js: JetStreamContext, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firing, "FALLBACK", 0.5)
    due = busy_second(3 * firing.CHUNK)
    dead, alive = Firing(nc, redis), Firing(nc, redis)
    taken, _ = await dead.split(Batch(due[: 2 * firing.CHUNK]))  # then it died, unpublished
    assert len(taken) == 2 * firing.CHUNK
    assert await alive.run(Batch(due)) == len(due)
    events = await stored(js)
    assert sorted(str(e.pipeline) for e in events) == sorted(e.pipeline for e, _ in due)


async def test_entries_dropped_before_their_second_are_not_published_after_it_they_are(
    nc: Client, js: JetStreamContext, redis: aioredis.Redis
) -> None:
    tick = coming_second(1.0)
    due = busy_second(10, tick)
    batch = Batch(due)
    running = asyncio.ensure_future(Firing(nc, redis).run(batch))
    await asyncio.sleep(0.1)
    batch.drop([due[0][0].id, due[1][0].id])  # pipelines changed before the tick
    await firing.until(tick.timestamp())
    batch.drop([due[2][0].id])  # too late: the tick has come
    assert await running == 8
    assert sorted(str(e.pipeline) for e in await stored(js)) == [f"s{i}" for i in range(2, 10)]


async def test_what_jetstream_did_not_store_is_not_marked_fired(
    nc: Client, js: JetStreamContext, redis: aioredis.Redis
) -> None:
    one = Firing(nc, redis)
    good = firing.encoded(busy_second(2))
    answers = await one.send([*good, ("ry.no-stream.here", "x", b"{}")])
    assert answers[:2] == ["", ""] and answers[2]  # stored, stored, and why not
    assert await one.send(good) == ["", ""]  # duplicates: dropped by JetStream, not errors
    assert len(await stored(js)) == 2
    assert await one.unfired(busy_second(2)) == busy_second(2)  # send does not mark
    assert await one.publish(busy_second(3)) == 3
    assert await one.unfired(busy_second(4)) == busy_second(4)[3:]
