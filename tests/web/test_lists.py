"""The pure parts behind the UI's lists and charts: run filters and an agent's busy
spans read from a run's state."""

from __future__ import annotations

from typing import Any

import pytest

from services.store.agent_use import attempt_spans
from services.store.run_lists import Filters

ROW = {"status": "failure", "branch": "main", "trigger": "push", "actor": "ada"}


@pytest.mark.parametrize(
    ("filters", "kept"),
    [
        (Filters(), True),
        (Filters(status="failure"), True),
        (Filters(status="success"), False),
        (Filters(branch="main", trigger="push", actor="ada"), True),
        (Filters(branch="dev"), False),
        (Filters(actor="grace"), False),
    ],
)
def test_filters_match_exactly_and_empty_means_any(filters: Filters, kept: bool) -> None:
    assert filters.keep(ROW) is kept


def _job(agent: str, start: float, end: float | None, **more: Any) -> dict[str, Any]:
    return {"host": {"agent": {"id": agent}}, "started_at": start, "finished_at": end, **more}


def test_busy_spans_are_the_agents_attempts_in_the_window() -> None:
    state = {
        "jobs": {
            "a": _job("box", 100, 200),
            "b": _job("box", 150, None),  # still running
            "c": _job("other", 120, 180),
            "d": _job("box", 10, 20),  # over before the window
            "e": _job(
                "other",
                300,
                400,
                attempts=[{"agent": {"id": "box"}, "started_at": 210, "finished_at": 290}],
            ),
        }
    }
    assert sorted(attempt_spans(state, "box", since=50), key=str) == [
        (100.0, 200.0),
        (150.0, None),
        (210.0, 290.0),
    ]
