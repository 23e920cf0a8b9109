"""Run records: one hash per run (immutable facts, a summary for listings, the engine's
state and its version for compare-and-set) and per-pipeline history with run numbers.

The engine's state is stored split, so a change rewrites only what it touched: the
run's own fields (with the order of its jobs) in `run`, each job's state in
`job:<key>`. A run stored before that has the whole state in one field, `state`; both
read the same (`state_json`), and the first commit to such a run writes it split."""

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
# The split state: the run's own fields and its job keys in order, and one per job.
RUN_STATE = "run"
JOB = "job:"
LEGACY_STATE = "state"  # the whole state in one field (runs stored before the split)


def split_state(state_json: str) -> dict[str, str]:
    """A whole run state's JSON as the hash fields it is stored in."""
    state = orjson.loads(state_json)
    jobs: dict[str, Any] = state.pop("jobs", {})
    fields = {RUN_STATE: dumps({**state, "jobs": list(jobs)})}
    fields.update((JOB + key, dumps(job)) for key, job in jobs.items())
    return fields


def state_json(fields: dict[str, str]) -> str | None:
    """The whole run state's JSON from a run's hash fields (split or not), None when
    it holds none. A whole `state` wins: a commit that writes the split fields deletes
    it, so one found next to them was written later (by a dispatcher from before the
    split)."""
    head = fields.get(RUN_STATE)
    if head is None or LEGACY_STATE in fields:
        return fields.get(LEGACY_STATE)
    run = orjson.loads(head)
    keys: list[str] = run.pop("jobs")
    jobs = ",".join(f"{dumps(key)}:{fields[JOB + key]}" for key in keys)
    return f'{dumps(run)[:-1]},"jobs":{{{jobs}}}}}'


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
    """A run's hash fields; `state` holds the whole state's JSON. `split`: that state
    was assembled from the split fields (`run`, `job:<key>`), which hold all of it."""

    id: str
    fields: dict[str, str]
    split: bool = False

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


def state_args(fields: dict[str, str]) -> list[str]:
    """State fields as the `field, value, …` tail of the COMMIT and CREATE_RUN args."""
    return [item for pair in fields.items() for item in pair]


async def create_run(
    r: Redis, scripts: Scripts, run_id: str, fields: dict[str, str], state: str
) -> int:
    """The new run's number, or 0 when a run with this id exists already. `state` is
    the whole state's JSON; it is stored split (`split_state`)."""
    project, pipeline = fields["project"], fields["pipeline"]
    result = await scripts.create_run(
        keys=[run_key(run_id), history_key(project, pipeline), run_number_key(project, pipeline)],
        args=[dumps(fields), run_id, *state_args(split_state(state))],
    )
    return int(result)


async def record_stale(r: Redis, run_id: str, field: str, report: dict[str, Any]) -> None:
    """Keep a late report with its run (not when the run is gone)."""
    if await r.exists(run_key(run_id)):
        await r.hset(run_key(run_id), STALE + field, dumps(report))


async def load_run(r: Redis, run_id: str) -> StoredRun | None:
    """The run's fields, with the whole state's JSON assembled in `state`."""
    return _stored(run_id, strdict(await r.hgetall(run_key(run_id))))


async def load_runs(r: Redis, run_ids: list[str]) -> list[StoredRun | None]:
    """`load_run` for each of `run_ids`, in one round trip."""
    async with r.pipeline(transaction=False) as p:
        for run_id in run_ids:
            p.hgetall(run_key(run_id))
        rows = await p.execute()
    return [_stored(run_id, strdict(row)) for run_id, row in zip(run_ids, rows, strict=True)]


def _stored(run_id: str, fields: dict[str, str]) -> StoredRun | None:
    if not fields:
        return None
    split = RUN_STATE in fields and LEGACY_STATE not in fields
    whole = state_json(fields)
    if whole is not None:
        fields[LEGACY_STATE] = whole
    return StoredRun(run_id, fields, split)


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
    split, whole = await r.hmget(run_key(run), [JOB + job, LEGACY_STATE])
    if whole is not None:  # stored whole (see state_json)
        candidates = list((orjson.loads(whole).get("jobs") or {}).values())  # key → job
    elif split is not None:
        candidates = [orjson.loads(split)]
    else:
        return None
    for found in candidates:
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
