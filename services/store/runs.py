"""Run records: one hash per run (immutable facts, a summary for listings, the engine's
state and its version for compare-and-set) and per-pipeline history with run numbers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

# the key patterns live in schemas.subjects; these names are kept for callers
from schemas.subjects import GROUPS as GROUPS
from schemas.subjects import ONLINE as ONLINE
from schemas.subjects import OUTBOX as OUTBOX
from schemas.subjects import PLACED as PLACED
from schemas.subjects import PLACEMENTS as PLACEMENTS
from schemas.subjects import QUEUE as QUEUE
from schemas.subjects import QUEUE_INFO as QUEUE_INFO
from schemas.subjects import TIMERS as TIMERS
from schemas.subjects import attempt_member, run_history_key, run_number_key
from schemas.subjects import group_key as group_key
from schemas.subjects import run_key as run_key
from services.store.connection import Redis, strdict, strs
from services.store.scripts import Scripts

history_key = run_history_key

# Fields `stale:<job>|<attempt>|<agent>|<what>` of a run's hash: a late report, kept with
# the run (one per attempt, agent and kind of report, so repeats overwrite it).
STALE = "stale:"


def commit_keys(run_id: str) -> list[str]:
    """The KEYS of the `COMMIT` script for a run."""
    return [run_key(run_id), OUTBOX, QUEUE, QUEUE_INFO, TIMERS, PLACEMENTS, PLACED]


def run_id_for(event_id: str, project: str, pipeline: str) -> str:
    """Deterministic, so an event delivered twice names the same run and makes one."""
    digest = hashlib.sha256(f"{event_id}\0{project}\0{pipeline}".encode()).hexdigest()
    return digest[:20]


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass
class StoredRun:
    id: str
    fields: dict[str, str]

    @property
    def number(self) -> int:
        return int(self.fields.get("number", 0))

    @property
    def version(self) -> int:
        return int(self.fields["ver"])

    def json(self, name: str) -> Any:
        return orjson.loads(self.fields[name]) if name in self.fields else None

    def stale(self) -> list[dict[str, Any]]:
        """Reports agents sent for attempts they no longer held (dropped), oldest first."""
        found = [orjson.loads(v) for k, v in self.fields.items() if k.startswith(STALE)]
        return sorted(found, key=lambda s: s.get("at", 0))

    def summary(self) -> dict[str, Any]:
        f = self.fields

        def num(name: str) -> float | None:
            return float(f[name]) if f.get(name) else None

        return {
            "id": self.id,
            "number": self.number,
            "project": f.get("project"),
            "pipeline": f.get("pipeline"),
            "pipeline_version": int(f.get("version", 0)),
            "status": f.get("status"),
            "trigger": f.get("trigger"),
            "actor": f.get("actor") or None,
            "created_at": num("created_at"),
            "started_at": num("started_at"),
            "finished_at": num("finished_at"),
        }


async def create_run(
    r: Redis, scripts: Scripts, run_id: str, fields: dict[str, str], state: str
) -> int:
    """The new run's number, or 0 when a run with this id exists already."""
    project, pipeline = fields["project"], fields["pipeline"]
    result = await scripts.create_run(
        keys=[run_key(run_id), history_key(project, pipeline), run_number_key(project, pipeline)],
        args=[dumps(fields), state, run_id],
    )
    return int(result)


async def record_stale(r: Redis, run_id: str, field: str, report: dict[str, Any]) -> None:
    """Keep a late report with its run (not when the run is gone)."""
    if await r.exists(run_key(run_id)):
        await r.hset(run_key(run_id), STALE + field, dumps(report))


async def load_run(r: Redis, run_id: str) -> StoredRun | None:
    fields = strdict(await r.hgetall(run_key(run_id)))
    return StoredRun(run_id, fields) if fields else None


async def list_runs(
    r: Redis, project: str, pipeline: str, limit: int = 50, before: int | None = None
) -> list[dict[str, Any]]:
    """Newest first."""
    top = f"({before}" if before else "+inf"
    ids = strs(await r.zrevrangebyscore(history_key(project, pipeline), top, "-inf", 0, limit))
    fields = ["project", "pipeline", "version", "status", "trigger", "actor", "number"]
    fields += ["created_at", "started_at", "finished_at"]
    async with r.pipeline(transaction=False) as p:
        for run_id in ids:
            p.hmget(run_key(run_id), fields)
        rows = await p.execute()
    return [
        StoredRun(
            run_id, {k: v for k, v in zip(fields, row, strict=True) if v is not None}
        ).summary()
        for run_id, row in zip(ids, rows, strict=True)
    ]


async def ran_on(r: Redis, run: str, job: str, attempt: int) -> str | None:
    """The agent that holds, or held, a job attempt: its placement while it runs, else
    what the run's state recorded of it (a finished or retried attempt)."""
    holder = await r.hget(PLACEMENTS, attempt_member(run, job, attempt))
    if holder is not None:
        return str(holder)
    state = await r.hget(run_key(run), "state")
    if state is None:
        return None
    for found in (orjson.loads(state).get("jobs") or {}).values():  # key → job state
        if found.get("key") != job:
            continue
        if found.get("attempt") == attempt:
            return _agent_id((found.get("host") or {}).get("agent"))
        for earlier in found.get("attempts") or []:
            if earlier.get("attempt") == attempt:
                return _agent_id(earlier.get("agent"))
    return None


def _agent_id(context: object) -> str | None:
    return str(context.get("id")) if isinstance(context, dict) and context.get("id") else None
