"""The scheduler's async shell: every pipeline's schedule entries in one timetable,
kept in step with `ry.pipelines.changed` (no polling), and one timer that takes the
ticks due in a second together, shortly before it, to be claimed and encoded ahead and
published at the second (services/scheduler/firing.py).

Each tick publishes a `cron` trigger event whose `Nats-Msg-Id` is the entry and the
scheduled time, so replicas firing the same tick make one event. After downtime, each
entry fires at most once for the latest tick missed within the grace period
(`RUNYARD_SCHEDULE_GRACE`, seconds, default 300): never a storm of old ticks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg

from runyard.settings import SCHEDULE_GRACE
from schemas import subjects
from services import bus
from services.scheduler import firing, ticks
from services.scheduler.firing import Batch, Due, Firing
from services.scheduler.timetable import Timetable
from services.store import records
from services.store.connection import Redis
from services.store.records import validate_source

log = logging.getLogger("runyard.scheduler")

GRACE = SCHEDULE_GRACE  # default; `runyard serve scheduler` passes RUNYARD_SCHEDULE_GRACE
READ_AT_ONCE = 50  # pipelines read concurrently at start (within the connection pool)


class Scheduler:
    def __init__(self, nc: Client, r: Redis, grace: float = GRACE) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.r = r
        self.grace = grace
        self.firing = Firing(nc, r, grace=grace)
        self.timetable = Timetable(grace)
        self.entries: dict[str, list[str]] = {}  # "project/pipeline" → its entries' ids
        self.changed = asyncio.Event()  # the timetable changed: look at the next tick again
        self.timer: asyncio.Task[None] | None = None
        self.batches: dict[asyncio.Task[None], Batch] = {}  # on their way

    async def start(self) -> None:
        await bus.ensure_streams(self.js)
        self.timer = asyncio.ensure_future(self._timer())
        await self.nc.subscribe(subjects.PIPELINES_CHANGED, cb=self._changed)
        missed: list[Due] = []
        for project in await records.list_projects(self.r):
            names = await self.r.smembers(subjects.key("pipelines", project))
            for record in await self._read(project, sorted(str(n) for n in names)):
                missed += await self.sync(record)
        await self.firing.publish(await self.firing.unfired(missed))
        log.info("%d schedule entries of %d pipelines", len(self.timetable), len(self.entries))

    async def stop(self) -> None:
        tasks = [t for t in (self.timer, *self.batches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, project: str, names: list[str]) -> list[records.PipelineRecord]:
        found: list[records.PipelineRecord] = []
        for start in range(0, len(names), READ_AT_ONCE):
            chunk = names[start : start + READ_AT_ONCE]
            got = await asyncio.gather(
                *(records.get_pipeline(self.r, project, n) for n in chunk),
                return_exceptions=True,
            )
            found += [g for g in got if isinstance(g, records.PipelineRecord)]
        return found

    async def _changed(self, msg: Msg) -> None:
        project, _, name = msg.data.decode().partition("/")
        try:
            record = await records.get_pipeline(self.r, project, name)
        except records.NotFound:
            self._drop(project, name)
            return
        await self.sync(record)

    async def sync(self, record: records.PipelineRecord) -> list[Due]:
        """Replace the pipeline's entries by those of its current schedule (none if it
        is not valid); the latest tick of each missed within the grace period."""
        self._drop(record.project, record.name)
        await asyncio.sleep(0)  # validating takes milliseconds: let the timer in between
        result = validate_source(record.source, record.format)
        if result.pipeline is None or not result.ok:
            return []
        now = datetime.now(UTC)
        entries = ticks.entries(record.project, result.pipeline)
        missed = []
        for entry in entries:
            self.timetable.add(entry, now)
            tick = ticks.latest_tick(entry.trigger(), now, self.grace)
            if tick is not None:
                missed.append((entry, tick))
        self.entries[f"{record.project}/{record.name}"] = [e.id for e in entries]
        self.changed.set()
        return missed

    def _drop(self, project: str, name: str) -> list[str]:
        """Take the pipeline's entries out of the timetable; their ids."""
        dropped = self.entries.pop(f"{project}/{name}", [])
        for entry_id in dropped:
            self.timetable.remove(entry_id)
        for batch in self.batches.values():
            batch.drop(dropped)
        return dropped

    async def _timer(self) -> None:
        """Sleep until LEAD seconds before the earliest tick (or a change), take every
        tick due by then, and start a batch for each second (claimed and encoded at
        once, published at its second) in the background, so that the next second's
        ticks are never held up."""
        while True:
            now = datetime.now(UTC)
            seconds: dict[datetime, list[Due]] = {}
            for entry, tick in self.timetable.take(now, now.timestamp() + firing.LEAD):
                seconds.setdefault(tick, []).append((entry, tick))
            for due in seconds.values():
                batch = Batch(due)
                task = asyncio.ensure_future(self._fire(batch))
                self.batches[task] = batch
                task.add_done_callback(self._done)
            self.changed.clear()
            at = self.timetable.next_due()
            wait = None if at is None else max(at - firing.LEAD - time.time(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), wait)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.batches.pop(task, None)

    async def _fire(self, batch: Batch) -> None:
        count = len(batch)
        try:
            await self.firing.run(batch)
        except Exception:
            log.exception("firing %d ticks", count)
