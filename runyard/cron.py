"""Cron expressions of `triggers.schedule`: 5 fields, or 6 with seconds first."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

FIELDS = ("minute", "hour", "day", "month", "day_of_week")


def zone(name: str) -> ZoneInfo:
    """The time zone `name`, or ValueError with a sentence naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone '{name}' (expected a name like 'Europe/Berlin')"
        ) from None


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _day(token: str) -> str:
    return _DAYS[int(token)] if token.isdigit() and int(token) < len(_DAYS) else token


def _weekdays(field: str) -> str:
    """Cron counts weekdays from Sunday = 0 (and 7); APScheduler from Monday = 0, so
    numbers become names (`1-5` → `mon-fri`), which mean the same to both."""
    parts = []
    for part in field.split(","):
        span, _, step = part.partition("/")
        low, _, high = span.partition("-")
        if high == "7" and low not in ("0", "7"):  # `5-7` is fri..sun: split at the wrap
            parts.append(f"{_day(low)}-sat" + (f"/{step}" if step else ""))
            parts.append("sun")
            continue
        text = _day(low) + (f"-{_day(high)}" if high else "")
        parts.append(text + (f"/{step}" if step else ""))
    return ",".join(parts)


def trigger(expression: str, timezone: str = "UTC") -> CronTrigger:
    """An APScheduler trigger for `expression`; ValueError with a clear sentence if bad."""
    tz = zone(timezone)
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"cron '{expression}' has {len(fields)} fields; expected 5 "
            "(minute hour day month weekday) or 6 (seconds first)"
        )
    values = dict(zip(FIELDS, fields[-5:], strict=True))
    values["day_of_week"] = _weekdays(values["day_of_week"])
    second = fields[0] if len(fields) == 6 else "0"
    try:
        return CronTrigger(second=second, timezone=tz, **values)
    except ValueError as exc:
        raise ValueError(f"cron '{expression}' is invalid: {exc}") from None
