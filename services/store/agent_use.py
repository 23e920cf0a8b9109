"""When an agent was busy: the job attempts it ran, read from the runs of the projects
it serves (the dispatcher keeps no history of slots, only the current count)."""

from __future__ import annotations

from typing import Any

import orjson

from services.store import runs
from services.store.connection import Redis, strs

Span = tuple[float, float | None]  # start, and end (None: still running)


def attempt_spans(state: dict[str, Any], agent_id: str, since: float) -> list[Span]:
    """The spans of the run's job attempts (earlier ones too) on the agent, ending after
    `since`."""
    found: list[Span] = []
    for job in (state.get("jobs") or {}).values():
        attempts = list(job.get("attempts") or [])
        attempts.append({**job, "agent": (job.get("host") or {}).get("agent")})
        for one in attempts:
            agent = one.get("agent") or {}
            start, end = one.get("started_at"), one.get("finished_at")
            if agent.get("id") == agent_id and start and (end is None or end >= since):
                found.append((float(start), float(end) if end else None))
    return found


async def busy(
    r: Redis, agent_id: str, pipelines: dict[str, list[str]], since: float
) -> list[Span]:
    """(start, end or None while running) of each job attempt on the agent that was
    running after `since`, from the runs of `pipelines` (project → names) made in the
    window or still going."""
    ids: list[str] = []
    for project, names in pipelines.items():
        for name in names:
            ids += strs(await r.zrevrange(runs.history_key(project, name), 0, 499))
    found: list[Span] = []
    for stored in await runs.load_runs(r, ids):
        if stored is None or (state := stored.fields.get(runs.LEGACY_STATE)) is None:
            continue
        finished = stored.fields.get("finished_at")
        if not finished or float(finished) >= since:
            found += attempt_spans(orjson.loads(state), agent_id, since)
    return sorted(found, key=lambda span: span[0])
