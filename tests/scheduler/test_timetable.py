"""The scheduler's timetable: next ticks, a busy second taken together, stalls
coalesced, the grace period, entries removed and replaced."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.scheduler.ticks import Entry
from services.scheduler.timetable import Timetable


def at(hour: int, minute: int, second: float = 0) -> datetime:
    whole = int(second)
    return datetime(2026, 11, 24, hour, minute, whole, int((second - whole) * 1e6), tzinfo=UTC)


EVERY_MINUTE = Entry("p", "Minutely", 0, "* * * * *", "UTC")
HOURLY = Entry("p", "Hourly", 0, "0 * * * *", "UTC")


@pytest.mark.parametrize(
    ("entry", "added", "taken", "expected", "then"),
    [
        # on time: the tick itself, then the next one
        (EVERY_MINUTE, at(10, 0, 30), at(10, 1, 0.2), [at(10, 1)], at(10, 2)),
        # a process that stalled for three minutes fires once, for the latest tick
        (EVERY_MINUTE, at(10, 0, 30), at(10, 4, 10), [at(10, 4)], at(10, 5)),
        # a tick older than the grace period (300 s) is dropped, not fired late
        (HOURLY, at(10, 30), at(11, 10), [], at(12, 0)),
    ],
)
def test_due_ticks(
    entry: Entry, added: datetime, taken: datetime, expected: list[datetime], then: datetime
) -> None:
    table = Timetable(grace=300)
    table.add(entry, added)
    assert table.due(added) == []
    assert [tick for _, tick in table.due(taken)] == expected
    assert table.next_due() == then.timestamp()


def test_a_busy_second_is_taken_at_once_and_nothing_early() -> None:
    table = Timetable(grace=300)
    entries = [Entry("p", f"s{i}", 0, "0 * * * *", "UTC") for i in range(1000)]
    for entry in entries:
        table.add(entry, at(10, 30))
    assert table.due(at(10, 59, 59.9)) == []
    taken = table.due(at(11, 0, 0.01))
    assert sorted(e.id for e, _ in taken) == sorted(e.id for e in entries)
    assert {tick for _, tick in taken} == {at(11, 0)}
    assert table.due(at(11, 0, 0.5)) == []


def test_removed_and_replaced_entries() -> None:
    table = Timetable(grace=300)
    table.add(HOURLY, at(10, 30))
    table.remove(HOURLY.id)
    assert table.next_due() is None and len(table) == 0
    table.add(HOURLY, at(10, 30))
    table.add(Entry("p", "Hourly", 0, "30 * * * *", "UTC"), at(10, 30))  # edited: replaced
    assert len(table) == 1
    assert [t for _, t in table.due(at(11, 0, 1))] == []
    assert [t for _, t in table.due(at(11, 30, 1))] == [at(11, 30)]


EVERY_SECOND = Entry("p", "Secondly", 0, "* * * * * *", "UTC")


def test_ticks_to_come_are_taken_ahead_and_late_ones_as_before() -> None:
    table = Timetable(grace=300)
    table.add(HOURLY, at(10, 30))
    table.add(EVERY_SECOND, at(10, 59, 58.5))
    # two seconds ahead: the hourly tick as it is, each second's tick up to then
    taken = table.take(at(10, 59, 58.5), at(11, 0, 0.5).timestamp())
    assert sorted((e.id, t) for e, t in taken) == [
        (HOURLY.id, at(11, 0)),
        (EVERY_SECOND.id, at(10, 59, 59)),
        (EVERY_SECOND.id, at(11, 0)),
    ]
    assert table.next_due() == at(11, 0, 1).timestamp()
    assert table.take(at(10, 59, 59), at(11, 0, 0.9).timestamp()) == []  # none twice
    # after a stall, a tick that has come still coalesces with the later ones missed
    assert table.take(at(11, 0, 4.5), at(11, 0, 6.5).timestamp()) == [
        (EVERY_SECOND, at(11, 0, 4)),
        (EVERY_SECOND, at(11, 0, 5)),
        (EVERY_SECOND, at(11, 0, 6)),
    ]


def test_a_tick_past_the_grace_is_skipped_even_when_taken_ahead() -> None:
    table = Timetable(grace=300)
    table.add(HOURLY, at(10, 30))
    # the process stalled past 11:00 + grace: that tick is dropped, the next one is ahead
    assert table.take(at(11, 10), at(11, 10, 2).timestamp()) == []
    assert table.take(at(11, 59, 59), at(12, 0, 1).timestamp()) == [(HOURLY, at(12, 0))]
