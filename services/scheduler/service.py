"""The scheduler's async shell: one APScheduler job per schedule entry of every
pipeline, kept in step with `ry.pipelines.changed` (no polling).

Each tick publishes a `cron` trigger event whose `Nats-Msg-Id` is the entry and the
scheduled time, so replicas firing the same tick make one event. After downtime, each
entry fires at most once for the latest tick missed within the grace period
(`RUNYARD_SCHEDULE_GRACE`, seconds, default 300): never a storm of old ticks."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import subjects
from schemas.messages import TriggerEvent
from services import bus
from services.scheduler import ticks
from services.store import records
from services.store.connection import Redis
from services.store.records import validate_source

log = logging.getLogger("runyard.scheduler")

GRACE = float(os.environ.get("RUNYARD_SCHEDULE_GRACE", 300))


class Scheduler:
    def __init__(self, nc: Client, r: Redis, grace: float = GRACE) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.r = r
        self.grace = grace
        self.aps = AsyncIOScheduler(timezone=UTC)
        self.jobs: dict[str, list[str]] = {}  # "project/pipeline" → APScheduler job ids

    async def start(self) -> None:
        await bus.ensure_streams(self.js)
        self.aps.start()
        await self.nc.subscribe(subjects.PIPELINES_CHANGED, cb=self._changed)
        for project in await records.list_projects(self.r):
            for record in await records.list_pipelines(self.r, project):
                await self.sync(project, record.name, catch_up=True)

    async def stop(self) -> None:
        self.aps.shutdown(wait=False)

    async def _changed(self, msg: Msg) -> None:
        project, _, name = msg.data.decode().partition("/")
        await self.sync(project, name)

    async def sync(self, project: str, name: str, catch_up: bool = False) -> None:
        """Replace the pipeline's jobs by those of its current schedule (none if gone)."""
        for job_id in self.jobs.pop(f"{project}/{name}", []):
            if self.aps.get_job(job_id):
                self.aps.remove_job(job_id)
        try:
            record = await records.get_pipeline(self.r, project, name)
        except records.NotFound:
            return
        result = validate_source(record.source, record.format)
        if result.pipeline is None or not result.ok:
            return
        ids = []
        for entry in ticks.entries(project, result.pipeline):
            trigger = entry.trigger()
            self.aps.add_job(
                self._fire,
                trigger=trigger,
                args=[entry],
                id=entry.id,
                replace_existing=True,
                misfire_grace_time=int(self.grace),
                coalesce=True,
                max_instances=1,
            )
            ids.append(entry.id)
            if catch_up:
                await self._catch_up(entry)
        self.jobs[f"{project}/{name}"] = ids

    async def _catch_up(self, entry: ticks.Entry) -> None:
        missed = ticks.latest_tick(entry.trigger(), datetime.now(UTC), self.grace)
        last = await self.r.get(subjects.key("schedule", entry.id))
        if missed is not None and (last is None or datetime.fromisoformat(str(last)) < missed):
            await self._publish(entry, missed)

    async def _fire(self, entry: ticks.Entry) -> None:
        tick = ticks.latest_tick(entry.trigger(), datetime.now(UTC), self.grace)
        if tick is not None:
            await self._publish(entry, tick)

    async def _publish(self, entry: ticks.Entry, tick: datetime) -> None:
        event = TriggerEvent(
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
        try:
            await self.js.publish(
                subjects.events("cron", entry.project),
                event.encode(),
                headers={"Nats-Msg-Id": event.id},
            )
            await self.r.set(
                subjects.key("schedule", entry.id),
                tick.astimezone(UTC).isoformat(),
                ex=7 * 24 * 3600,
            )
        except Exception as exc:
            log.warning("tick %s of %s not published: %s", tick, entry.id, exc)
