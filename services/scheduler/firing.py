"""Publishing the ticks due in a second, shared between scheduler replicas.

A second's ticks make a `Batch`. LEAD seconds before the second, each replica claims
them in chunks with one Valkey script per chunk (the second's claims: entry → replica)
and encodes the events of those it won; at the second it only sends them, all at once
with their acknowledgements outstanding, so the second itself costs a write per event
and no round trip before the first. The replicas take turns at a second (a counter in
Valkey) and start claiming at different places in the sorted batch (the first at its
start, the second half-way), so two replicas split it instead of racing for the same
chunks. A tick lost to another replica is checked again FALLBACK seconds after its
second (or after it was taken, if later) and published if not marked fired by then (the
replica died); when Valkey cannot be reached, everything is published. Either way the
event's `Nats-Msg-Id` keeps JetStream at one event per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import subjects
from schemas.messages import TriggerEvent
from services.scheduler import ticks
from services.store.connection import Redis

log = logging.getLogger("runyard.scheduler")

LEAD = 2.0  # seconds before its second a batch is claimed and encoded
CHUNK = 250  # ticks claimed per script call
FALLBACK = 5.0  # seconds after its second before a tick another replica claimed is checked
ACK_WAIT = 5.0  # seconds JetStream has to acknowledge a batch's events
KEPT = 600  # seconds a second's claims and turns are kept (its fired marks: + the grace)

Due = tuple[ticks.Entry, datetime]
Message = tuple[str, str, bytes]  # subject, Nats-Msg-Id, event


def claims(second: int) -> str:
    """Entry id → the replica that claimed the entry's tick at `second` (POSIX)."""
    return subjects.key("schedules", "claimed", str(second))


def marks(second: int) -> str:
    """Entry id → 1 for the entries whose tick at `second` was published. By second,
    not one mark per entry for its latest tick: an entry due every second has several
    ticks on their way at once, claimed and published in any order."""
    return subjects.key("schedules", "fired", str(second))


def turns(second: int) -> str:
    """How many replicas have begun claiming `second`'s ticks."""
    return subjects.key("schedules", "turn", str(second))


# KEYS: the second's claims.  ARGV: this replica, how long to keep them, entry ids…
# → the positions (1-based) of the entries this replica claimed: those not claimed yet,
# and those it had claimed itself (ahead, then taken again after an edit of the pipeline)
CLAIM = """
local won = {}
for i = 3, #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if not held or held == ARGV[1] then
    if not held then redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) end
    table.insert(won, i - 2)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
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


def encoded(due: list[Due]) -> list[Message]:
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


def second(tick: datetime) -> int:
    return int(tick.timestamp())


def by_second(due: Iterable[Due]) -> dict[int, list[Due]]:
    """`due` grouped by second; each tick object's second computed once (a batch's
    ticks are mostly one object, and `timestamp()` of an aware time is not free)."""
    seconds: dict[int, int] = {}  # id(tick) → its second, while `due` holds the ticks
    grouped: dict[int, list[Due]] = {}
    for entry, tick in due:
        at = seconds.get(id(tick))
        if at is None:
            at = seconds[id(tick)] = second(tick)
        grouped.setdefault(at, []).append((entry, tick))
    return grouped


class Batch:
    """Ticks due in one second, on their way from the timetable to JetStream; an entry
    dropped from the timetable meanwhile (its pipeline changed) is dropped here too."""

    def __init__(self, due: list[Due]) -> None:
        self.items: dict[str, Due] = {entry.id: (entry, tick) for entry, tick in due}
        if len(by_second(due)) > 1:
            raise ValueError("a batch is the ticks of one second")
        self.at = max((tick.timestamp() for _, tick in due), default=0.0)  # due then

    def __len__(self) -> int:
        return len(self.items)

    def drop(self, entry_ids: Iterable[str]) -> None:
        """Take entries out before their second; once it has come they fire, as they
        would have without the lead."""
        if time.time() < self.at:
            for entry_id in entry_ids:
                self.items.pop(entry_id, None)

    def still(self, due: list[Due]) -> list[int]:
        """Positions in `due` of the ticks still in the batch."""
        items = self.items
        return [i for i, (entry, tick) in enumerate(due) if items.get(entry.id) == (entry, tick)]


def turn_start(turn: int, chunks: int) -> int:
    """The chunk the `turn`-th replica (from 1) at a second starts claiming at: 0, then
    half-way, a quarter, three quarters… so that each starts away from the others."""
    place, part, n = 0.0, 0.5, max(turn - 1, 0)
    while n:
        place += part * (n & 1)
        part, n = part / 2, n >> 1
    return int(place * chunks) % max(chunks, 1)


async def until(at: float) -> None:
    """Sleep until the POSIX time `at` (not at all if it has passed; never less: the
    event loop's timers may wake a millisecond early)."""
    for _ in range(3):
        wait = at - time.time()
        if wait <= 0:
            return
        await asyncio.sleep(wait + 0.0005)


class Acks:
    """JetStream's answers to one send of events: None while waiting, then "" for
    stored (or a duplicate dropped) or what went wrong."""

    def __init__(self, n: int) -> None:
        self.answers: list[str | None] = [None] * n
        self.left = n
        self.all = asyncio.Event()
        if not n:
            self.all.set()

    def answer(self, index: int, msg: Msg) -> None:
        if not 0 <= index < len(self.answers) or self.answers[index] is not None:
            return
        if msg.headers and msg.headers.get("Status") == "503":
            self.answers[index] = "no stream for the subject"
        else:
            try:
                error = orjson.loads(msg.data).get("error")
            except (orjson.JSONDecodeError, AttributeError):
                error = f"unexpected answer {msg.data[:80]!r}"
            self.answers[index] = "" if error is None else str(error)
        self.left -= 1
        if not self.left:
            self.all.set()


class Firing:
    def __init__(
        self, nc: Client, r: Redis, replica: str | None = None, grace: float = 0.0
    ) -> None:
        self.nc = nc
        self.r = r
        self.replica = replica or uuid.uuid4().hex
        self.marks_kept = int(KEPT + grace)  # a restart looks back as far as the grace
        self.claim = r.register_script(CLAIM)
        self.inbox = nc.new_inbox()  # JetStream's answers: <inbox>.<send>.<event>
        self.answers: Subscription | None = None
        self.sends: dict[str, Acks] = {}
        self.numbers = itertools.count()

    async def fire(self, due: list[Due]) -> int:
        """Publish one second's ticks now (those already due) or at their second."""
        return await self.run(Batch(due))

    async def run(self, batch: Batch) -> int:
        """Claim and encode `batch` now, publish what this replica won at its second;
        FALLBACK seconds later, what the other replica left unfired. How many ticks this
        replica published."""
        won, lost = await self.split(batch)
        claimed = time.time()
        messages = encoded(won)
        await until(batch.at)
        sent = time.time()
        kept = batch.still(won)
        published = await self.publish([won[i] for i in kept], [messages[i] for i in kept])
        if batch.items:  # not all dropped before the second
            log.info(
                "%d ticks due at %s: %d claimed here %.3f s before it, %d published,"
                " acknowledged %.3f s after it",
                len(batch),
                datetime.fromtimestamp(batch.at, UTC).isoformat(),
                len(won),
                batch.at - claimed,
                published,
                time.time() - batch.at,
            )
        if lost:
            await until(sent + FALLBACK)
            left = [lost[i] for i in batch.still(lost)]
            published += await self.publish(await self.unfired(left))
        return published

    async def split(self, batch: Batch) -> tuple[list[Due], list[Due]]:
        """The batch's ticks this replica claimed and those the other replicas did, in
        chunks taken from this replica's turn's place in the sorted batch onwards."""
        due = [batch.items[entry_id] for entry_id in sorted(batch.items)]
        chunks = [due[start : start + CHUNK] for start in range(0, len(due), CHUNK)]
        first = turn_start(await self._turn(batch.at), len(chunks))
        won: list[Due] = []
        lost: list[Due] = []
        for chunk in chunks[first:] + chunks[:first]:
            mine = await self._claimed(chunk)
            for i, tick in enumerate(chunk):
                (won if i in mine else lost).append(tick)
        return won, lost

    async def _turn(self, at: float) -> int:
        """This replica's turn at the second `at` (1 for the first to come; 1 without
        Valkey)."""
        key = turns(int(at))
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, KEPT)
                turn, _ = await pipe.execute()
        except Exception as exc:
            log.warning("taking a turn at %s: %s", at, exc)
            return 1
        return int(turn)

    async def _claimed(self, chunk: list[Due]) -> set[int]:
        """Positions in `chunk` (ticks of one second) this replica claimed (all of them
        without Valkey)."""
        if not chunk:
            return set()
        try:
            ids = [entry.id for entry, _ in chunk]
            key = claims(second(chunk[0][1]))
            won = await self.claim(keys=[key], args=[self.replica, KEPT, *ids])
        except Exception as exc:
            log.warning("claiming %d ticks: %s; publishing them all", len(chunk), exc)
            return set(range(len(chunk)))
        return {int(i) - 1 for i in won}

    async def unfired(self, due: list[Due]) -> list[Due]:
        """Those of `due` not marked fired."""
        if not due:
            return []
        grouped = by_second(due)
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for at, ticks_then in grouped.items():
                    pipe.hmget(marks(at), [entry.id for entry, _ in ticks_then])
                found = await pipe.execute()
        except Exception as exc:
            log.warning("reading %d fired marks: %s; publishing them all", len(due), exc)
            return due
        return [
            tick
            for ticks_then, marked in zip(grouped.values(), found, strict=True)
            for tick, mark in zip(ticks_then, marked, strict=True)
            if mark is None
        ]

    async def publish(self, due: list[Due], messages: list[Message] | None = None) -> int:
        """Send every tick's event (`messages`, encoded ahead, or encoded now), then
        mark those JetStream stored fired, in one round trip; how many were published."""
        if not due:
            return 0
        answers = await self.send(encoded(due) if messages is None else messages)
        published = []
        for (entry, tick), problem in zip(due, answers, strict=True):
            if problem == "":
                published.append((entry, tick))
            else:
                problem = problem or "no answer from JetStream"
                log.warning("tick %s of %s not published: %s", tick, entry.id, problem)
        try:
            if published:
                await self._mark(published)
        except Exception as exc:  # catch-up after a restart relies on the JetStream dedup
            log.warning("marking %d ticks fired: %s", len(published), exc)
        return len(published)

    async def send(self, messages: list[Message]) -> list[str | None]:
        """Publish to JetStream with every acknowledgement outstanding, as nats-py's
        `publish_async` does, but with one subscription for the answers and no future
        per event: 5,000 events were written in a third of the time and acknowledged in
        about half. JetStream's answer to each (see `Acks`), None where it gave none
        within ACK_WAIT."""
        if self.answers is None:
            self.answers = await self.nc.subscribe(f"{self.inbox}.>", cb=self._answered)
        number = str(next(self.numbers))
        acks = self.sends[number] = Acks(len(messages))
        reply = f"{self.inbox}.{number}."
        try:
            for i, (subject, msg_id, data) in enumerate(messages):
                headers = {"Nats-Msg-Id": msg_id}
                await self.nc.publish(subject, data, reply=f"{reply}{i}", headers=headers)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acks.all.wait(), ACK_WAIT)
        finally:
            del self.sends[number]
        return acks.answers

    async def _answered(self, msg: Msg) -> None:
        number, _, index = msg.subject[len(self.inbox) + 1 :].partition(".")
        acks = self.sends.get(number)
        if acks is not None and index.isdigit():
            acks.answer(int(index), msg)

    async def _mark(self, published: list[Due]) -> None:
        """Mark ticks fired, one round trip for any number of them."""
        async with self.r.pipeline(transaction=False) as pipe:
            for at, ticks_then in by_second(published).items():
                pipe.hset(marks(at), mapping={entry.id: 1 for entry, _ in ticks_then})
                pipe.expire(marks(at), self.marks_kept)
            await pipe.execute()
