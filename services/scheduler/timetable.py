"""Every schedule entry's next tick, earliest first (no I/O).

One timetable for all entries, so the ticks due in one second are taken together and
fired as one batch, rather than one timer and one task per entry (which is what made
10,000 schedules due in the same second take seconds to fire).
"""

from __future__ import annotations

import heapq
import itertools
from datetime import datetime

from apscheduler.triggers.cron import CronTrigger

from services.scheduler.ticks import Entry, next_tick


class Timetable:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._next: dict[str, tuple[int, Entry]] = {}  # entry id → (its heap item's number, entry)
        self._heap: list[tuple[float, int, datetime, str]] = []  # (due, number, tick, id)
        self._numbers = itertools.count()

    def __len__(self) -> int:
        return len(self._next)

    def add(self, entry: Entry, now: datetime) -> None:
        """Schedule `entry` from its first tick after `now` (replacing an older one)."""
        self._push(entry, next_tick(entry.trigger(), now))

    def remove(self, entry_id: str) -> None:
        self._next.pop(entry_id, None)  # its heap item is skipped when it comes up

    def next_due(self) -> float | None:
        """When the earliest tick is due (POSIX seconds), or None with nothing to fire."""
        while self._heap and not self._current(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def due(self, now: datetime) -> list[tuple[Entry, datetime]]:
        """Take every entry whose tick has come (see `take`)."""
        return self.take(now, now.timestamp())

    def take(self, now: datetime, until: float) -> list[tuple[Entry, datetime]]:
        """Take every entry whose tick is due by `until` (POSIX seconds, `now` or later),
        and schedule each at its next tick. A tick that has come is taken with the
        entry's latest tick up to `now` (ticks missed while the process stalled coalesce
        into one; one older than the grace period is dropped); a tick still to come is
        taken as it is, so an entry due every second may be taken for several ticks."""
        taken = []
        after: dict[tuple[CronTrigger, datetime], datetime | None] = {}  # shared by equal crons

        def following(trigger: CronTrigger, tick: datetime) -> datetime | None:
            if (trigger, tick) not in after:
                after[(trigger, tick)] = next_tick(trigger, tick)
            return after[(trigger, tick)]

        stamp = now.timestamp()
        while self._heap and self._heap[0][0] <= max(until, stamp):
            item = heapq.heappop(self._heap)
            if not self._current(item):
                continue
            entry = self._next[item[3]][1]
            trigger, tick = entry.trigger(), item[2]
            upcoming = following(trigger, tick)
            while tick.timestamp() <= stamp and upcoming is not None and upcoming <= now:
                tick, upcoming = upcoming, following(trigger, upcoming)
            if stamp - tick.timestamp() <= self.grace:
                taken.append((entry, tick))
            self._push(entry, upcoming)
        return taken

    def _current(self, item: tuple[float, int, datetime, str]) -> bool:
        known = self._next.get(item[3])
        return known is not None and known[0] == item[1]

    def _push(self, entry: Entry, tick: datetime | None) -> None:
        if tick is None:  # a schedule with no future tick
            self._next.pop(entry.id, None)
            return
        number = next(self._numbers)
        self._next[entry.id] = (number, entry)
        heapq.heappush(self._heap, (tick.timestamp(), number, tick, entry.id))
