from __future__ import annotations

from datetime import datetime

import pytest

from runyard import cron

UTC = cron.zone("UTC")


def next_fire(expression: str, after: datetime, timezone: str = "UTC") -> datetime:
    fire = cron.trigger(expression, timezone).get_next_fire_time(None, after)
    assert isinstance(fire, datetime)
    return fire


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # 2026-11-27 is a Friday: cron's 1-5 means Monday to Friday.
        (
            "0 3 * * 1-5",
            datetime(2026, 11, 27, 4, tzinfo=UTC),
            datetime(2026, 11, 30, 3, tzinfo=UTC),
        ),
        ("0 3 * * 0", datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 29, 3, tzinfo=UTC)),
        ("0 3 * * 7", datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 29, 3, tzinfo=UTC)),
        ("0 3 * * 5-7", datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 27, 3, tzinfo=UTC)),
        (
            "30 * * * * *",
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC),
        ),
        (
            "*/15 * * * *",
            datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
            datetime(2026, 1, 1, 0, 15, tzinfo=UTC),
        ),
    ],
)
def test_next_fire_times(expression: str, after: datetime, expected: datetime) -> None:
    assert next_fire(expression, after) == expected


def test_time_zone_is_honoured() -> None:
    berlin = cron.zone("Europe/Berlin")
    fire = next_fire("0 3 * * *", datetime(2026, 7, 1, tzinfo=UTC), "Europe/Berlin")
    assert fire == datetime(2026, 7, 1, 3, tzinfo=berlin)
    assert fire.astimezone(UTC).hour == 1  # CEST is UTC+2


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [("* * *", "has 3 fields"), ("61 * * * *", "is invalid"), ("* * * * mon-xyz", "is invalid")],
)
def test_bad_cron(expression: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        cron.trigger(expression)


def test_bad_zone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Nowhere/City'"):
        cron.zone("Nowhere/City")
