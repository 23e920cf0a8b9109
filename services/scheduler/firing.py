"""Publishing a batch of due ticks, shared between scheduler replicas.

Each replica claims ticks in chunks with one Valkey script (a claim per entry holds
the latest tick claimed) and publishes only those it won, so two replicas split the
work of a busy second instead of both publishing every tick. A tick lost to the other
replica is checked again FALLBACK seconds later and published if that replica has not
marked it fired (it died mid-batch); when Valkey cannot be reached, everything is
published. Either way the event's `Nats-Msg-Id` keeps JetStream at one event per tick.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import orjson
from nats.js import JetStreamContext

from schemas import subjects
from schemas.messages import TriggerEvent
from services.scheduler import ticks
from services.store.connection import Redis

log = logging.getLogger("runyard.scheduler")

CHUNK = 250  # ticks claimed per script call: replicas take turns on a busy second
FALLBACK = 5.0  # seconds before a tick the other replica claimed is checked
ACK_WAIT = 5.0  # seconds JetStream has to acknowledge a batch's events
# Entry id → the latest tick (POSIX seconds) claimed / published. Hashes, not a key per
# entry: marking a busy second's 10,000 ticks is then one command, not 10,000.
CLAIMED = subjects.key("schedules", "claimed")
FIRED = subjects.key("schedules", "fired")

Due = tuple[ticks.Entry, datetime]

# KEYS: the claims.  ARGV: entry id, tick, entry id, tick, …
# → the 1-based positions of the ticks this caller claimed
CLAIM = """
local won = {}
for i = 1, #ARGV, 2 do
  if tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1') < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    table.insert(won, (i + 1) / 2)
  end
end
return won
"""


def event(entry: ticks.Entry, tick: datetime) -> TriggerEvent:
    return TriggerEvent(
        id=ticks.event_id(entry, tick),
        kind="cron",
        project=entry.project,
        pipeline=entry.pipeline,
        payload={
            "schedule": entry.expression,
            "timezone": entry.timezone,
            "scheduled_at": tick.isoformat(),
        },
        created_at=tick.timestamp(),
    )


def encoded(due: list[Due]) -> list[tuple[str, str, bytes]]:
    """(subject, event id, event) of each tick. Only the first event is built through
    the model: the rest copy its fields, as validating 10,000 events would take most
    of a busy second."""
    if not due:
        return []
    template = event(*due[0]).model_dump(mode="json")
    out = []
    for entry, tick in due:
        when = tick.isoformat()
        fields = {
            **template,
            "id": ticks.event_id(entry, tick),
            "project": entry.project,
            "pipeline": entry.pipeline,
            "payload": {
                "schedule": entry.expression,
                "timezone": entry.timezone,
                "scheduled_at": when,
            },
            "created_at": tick.timestamp(),
        }
        out.append((subjects.events("cron", entry.project), fields["id"], orjson.dumps(fields)))
    return out


class Firing:
    def __init__(self, js: JetStreamContext, r: Redis) -> None:
        self.js = js
        self.r = r
        self.claim = r.register_script(CLAIM)

    async def fire(self, due: list[Due]) -> int:
        """Publish `due`'s ticks this replica wins; later, those the other one left.
        How many this replica published."""
        lost: list[Due] = []
        published = 0
        for start in range(0, len(due), CHUNK):
            chunk = due[start : start + CHUNK]
            won = await self._claimed(chunk)
            lost += [d for i, d in enumerate(chunk) if i not in won]
            published += await self.publish([chunk[i] for i in sorted(won)])
        if lost:
            await asyncio.sleep(FALLBACK)
            published += await self.publish(await self.unfired(lost))
        return published

    async def _claimed(self, chunk: list[Due]) -> set[int]:
        """Positions in `chunk` this replica claimed (all of them without Valkey)."""
        try:
            pairs = [(entry.id, tick.timestamp()) for entry, tick in chunk]
            won = await self.claim(keys=[CLAIMED], args=[x for pair in pairs for x in pair])
        except Exception as exc:
            log.warning("claiming %d ticks: %s; publishing them all", len(chunk), exc)
            return set(range(len(chunk)))
        return {int(i) - 1 for i in won}

    async def forget(self, entry_ids: list[str]) -> None:
        """Drop the marks of entries that are gone (their pipeline was deleted)."""
        if entry_ids:
            await self.r.hdel(CLAIMED, *entry_ids)
            await self.r.hdel(FIRED, *entry_ids)

    async def unfired(self, due: list[Due]) -> list[Due]:
        """Those of `due` not marked fired at their tick or later."""
        try:
            marks = await self.r.hmget(FIRED, [entry.id for entry, _ in due])
        except Exception as exc:
            log.warning("reading %d fired marks: %s; publishing them all", len(due), exc)
            return due
        return [
            (entry, tick)
            for (entry, tick), mark in zip(due, marks, strict=True)
            if mark is None or float(mark) < tick.timestamp()
        ]

    async def publish(self, due: list[Due]) -> int:
        """Publish concurrently, then mark what was published fired, in one round trip;
        how many were published."""
        if not due:
            return 0
        acks = [
            await self.js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id})
            for subject, msg_id, data in encoded(due)
        ]
        await asyncio.wait(acks, timeout=ACK_WAIT)
        published = []
        for (entry, tick), ack in zip(due, acks, strict=True):
            if ack.done() and ack.exception() is None:
                published.append((entry, tick))
                continue
            problem = ack.exception() if ack.done() else "no answer from JetStream"
            ack.cancel()
            log.warning("tick %s of %s not published: %s", tick, entry.id, problem)
        try:
            if published:
                marks = {entry.id: tick.timestamp() for entry, tick in published}
                await self.r.hset(FIRED, mapping=marks)  # type: ignore[arg-type]
        except Exception as exc:  # catch-up after a restart relies on the JetStream dedup
            log.warning("marking %d ticks fired: %s", len(published), exc)
        return len(published)
