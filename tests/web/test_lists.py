"""The pure parts behind the UI's lists and charts: run filters and an agent's busy
spans read from a run's state."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from services.stack import Stack
from services.store import run_lists, runs
from services.store.agent_use import attempt_spans
from services.store.connection import connect
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


async def test_pages_of_a_projects_runs_newest_first(redis: aioredis.Redis, stack: Stack) -> None:
    r = connect(stack.redis_url)  # `redis` emptied the database; this one decodes, as the web's
    made = []
    for n in range(1, 11):  # ten runs, alternating pipelines; every third one failed
        pipeline = "a" if n % 2 else "b"
        run_id = f"run{n}"
        status = "failure" if n % 3 == 0 else "success"
        fields = {"pipeline": pipeline, "number": n, "status": status, "created_at": 1000 + n}
        for name, value in fields.items():
            await r.hset(runs.run_key(run_id), name, str(value))
        await r.zadd(runs.history_key("p", pipeline), {run_id: n})
        made.append(run_id)
    seen, before = [], None
    while True:
        shown, before = await run_lists.page(r, "p", ["a", "b"], Filters(), 3, before)
        seen += [x["id"] for x in shown]
        if before is None:
            break
    assert seen == made[::-1]
    failed, nxt = await run_lists.page(r, "p", ["a", "b"], Filters(status="failure"), 10)
    assert [x["id"] for x in failed] == ["run9", "run6", "run3"] and nxt is None
    await r.aclose()
