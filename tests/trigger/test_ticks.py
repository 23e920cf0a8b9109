"""The scheduler's tick arithmetic: the latest due tick, and at most one catch-up."""

from __future__ import annotations

from datetime import UTC, datetime

from runyard import cron
from services.scheduler import ticks


def test_latest_tick_within_the_grace_period_only() -> None:
    hourly = cron.trigger("0 * * * *")
    now = datetime(2026, 11, 24, 10, 3, 20, tzinfo=UTC)
    assert ticks.latest_tick(hourly, now, 300) == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert ticks.latest_tick(hourly, now, 60) is None  # 10:00 is past the grace
    # after a long downtime, still one tick: the latest, never the ones before it
    every_minute = cron.trigger("* * * * *")
    assert ticks.latest_tick(every_minute, now, 3600) == datetime(2026, 11, 24, 10, 3, tzinfo=UTC)


def test_event_ids_name_the_entry_and_the_tick() -> None:
    entry = ticks.Entry("p", "Nightly", 0, "0 3 * * *", "Europe/Berlin")
    tick = datetime(2026, 11, 24, 3, 0, tzinfo=cron.zone("Europe/Berlin"))
    assert ticks.event_id(entry, tick) == "cron:p/Nightly#0:2026-11-24T03:00:00+01:00"
