"""Run listings for the web UI: a project's or a pipeline's runs, newest first, filtered
by status, branch, trigger and actor and paged by creation time; the newest run of each
pipeline; and the marker of a run asked for but not made yet (so a mistyped run id can
be told from a run the dispatcher is about to make)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.subjects import key
from services.store import runs
from services.store.connection import Redis, strs

SCANNED = 2000  # newest runs read per pipeline when filtering; older ones are not listed
CHUNK = 100  # runs read at a time
ASKED_TTL = 3600  # a run asked for and not made within the hour is not coming
_FIELDS = ["project", "pipeline", "version", "status", "trigger", "actor", "number"]
_FIELDS += ["created_at", "started_at", "finished_at", "event"]


def asked_key(run_id: str) -> str:
    """Set (with `ASKED_TTL`) when the API asks for a run: the run page waits for it."""
    return key("asked", run_id)


async def mark_asked(r: Redis, run_id: str) -> None:
    await r.set(asked_key(run_id), "1", ex=ASKED_TTL)


async def was_asked(r: Redis, run_id: str) -> bool:
    return bool(await r.exists(asked_key(run_id)))


@dataclass(frozen=True)
class Filters:
    """Exact matches; empty: any."""

    status: str = ""
    branch: str = ""
    trigger: str = ""
    actor: str = ""

    def keep(self, row: dict[str, Any]) -> bool:
        return all(
            not want or str(row.get(name) or "") == want
            for name, want in (
                ("status", self.status),
                ("branch", self.branch),
                ("trigger", self.trigger),
                ("actor", self.actor),
            )
        )


def _row(run_id: str, values: list[Any]) -> dict[str, Any]:
    fields = {k: str(v) for k, v in zip(_FIELDS, values, strict=True) if v is not None}
    stored = runs.StoredRun(run_id, fields)
    event = orjson.loads(fields["event"]) if fields.get("event") else {}
    return {**stored.summary(), "branch": event.get("branch"), "sha": event.get("sha")}


async def _matching(
    r: Redis, project: str, pipeline: str, filters: Filters, want: int, before: float | None
) -> list[dict[str, Any]]:
    """Up to `want` of the pipeline's runs made before `before` that pass `filters`,
    newest first: its history is read a chunk at a time (run numbers follow creation
    order), so an unfiltered page reads about as many runs as it shows."""
    found: list[dict[str, Any]] = []
    history = runs.history_key(project, pipeline)
    for start in range(0, SCANNED, CHUNK):
        ids = strs(await r.zrevrange(history, start, start + CHUNK - 1))
        async with r.pipeline(transaction=False) as p:
            for run_id in ids:
                p.hmget(runs.run_key(run_id), _FIELDS)
            rows = [_row(i, v) for i, v in zip(ids, await p.execute(), strict=True)]
        found += [
            x
            for x in rows
            if filters.keep(x) and (before is None or (x["created_at"] or 0) < before)
        ]
        if len(found) >= want or len(ids) < CHUNK:
            break
    return found[:want]


async def page(
    r: Redis,
    project: str,
    pipelines: Iterable[str],
    filters: Filters,
    limit: int,
    before: float | None = None,
) -> tuple[list[dict[str, Any]], float | None]:
    """Runs made before `before` (a `created_at`) that pass `filters`, newest first, and
    the `before` of the next page (None: this is the last)."""
    rows: list[dict[str, Any]] = []
    for name in pipelines:  # one more than a page: whether there is a next one
        rows += await _matching(r, project, name, filters, limit + 1, before)
    rows.sort(key=lambda x: x["created_at"] or 0, reverse=True)
    shown = rows[:limit]
    more = len(rows) > limit and shown
    return shown, (shown[-1]["created_at"] or 0) if more else None


async def newest(r: Redis, project: str, pipelines: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The newest run of each pipeline that has one, by pipeline name."""
    found: dict[str, dict[str, Any]] = {}
    for name in pipelines:
        ids = strs(await r.zrevrange(runs.history_key(project, name), 0, 0))
        if ids and (values := await r.hmget(runs.run_key(ids[0]), _FIELDS)):
            found[name] = _row(ids[0], list(values))
    return found
