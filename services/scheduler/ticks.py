"""Cron arithmetic for the scheduler (no I/O): which tick is due, and the one catch-up
tick after downtime."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from runyard import cron
from schemas.pipeline import Pipeline


@dataclass(frozen=True)
class Entry:
    """One schedule entry of one pipeline."""

    project: str
    pipeline: str
    index: int
    expression: str
    timezone: str

    @property
    def id(self) -> str:
        return f"{self.project}/{self.pipeline}#{self.index}"

    def trigger(self) -> CronTrigger:
        return cron.trigger(self.expression, self.timezone)


def entries(project: str, pipeline: Pipeline) -> list[Entry]:
    return [
        Entry(project, pipeline.name, i, s.cron, s.timezone)
        for i, s in enumerate(pipeline.triggers.schedule)
    ]


def latest_tick(trigger: CronTrigger, now: datetime, grace: float) -> datetime | None:
    """The last scheduled time in (now - grace, now], if any."""
    tick = trigger.get_next_fire_time(None, now - timedelta(seconds=grace))
    latest = None
    while tick is not None and tick <= now:
        latest = tick
        tick = trigger.get_next_fire_time(tick, tick + timedelta(microseconds=1))
    return latest


def event_id(entry: Entry, tick: datetime) -> str:
    """The same for every scheduler replica, so the stream keeps one event per tick."""
    return f"cron:{entry.project}/{entry.pipeline}#{entry.index}:{tick.isoformat()}"
