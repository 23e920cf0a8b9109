"""A run's state stored split (the run's own fields in `run`, each job in `job:<key>`):
a change writes only the jobs it touched, every reader sees the whole state, and a run
stored whole (one `state` field, before the split) still loads and is split by its
next commit."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client

from runyard.engine.events import (
    Command,
    Event,
    JobEnded,
    JobStarted,
    RunCancelled,
    RunDone,
    RunStep,
    StartJob,
    StepDone,
    StopJob,
)
from runyard.engine.machine import Engine, initial_state
from runyard.engine.state import RunState
from schemas.status import Status
from services.dispatcher.changes import Changes
from services.dispatcher.runs import LiveRun, live_run, plan_for
from services.store import agent_use
from services.store import runs as store
from services.store.scripts import Scripts

# needs, a matrix with fail-fast and max-parallel, retries, `if:` on jobs and steps,
# continue-on-error: every way the engine ends or restarts a job
MIXED = """
name: p
jobs:
  a:
    retry: {max: 1, when: [failure, agent-lost]}
    steps: [{run: x}, {run: y}, {run: z, if: always()}]
  m:
    needs: a
    strategy: {matrix: {x: [1, 2, 3]}, max-parallel: 2}
    steps: [{run: x}, {run: y}]
  f:
    strategy: {matrix: {y: [1, 2]}}
    steps: [{run: x}]
  s:
    needs: [m]
    if: failure()
    steps: [{run: x}]
  t:
    needs: [m, f]
    steps: [{run: x}, {run: y, continue-on-error: true}]
  u:
    needs: t
    steps: [{run: x}]
"""


def _fields(source: str, run_id: str = "r1") -> dict[str, str]:
    _, plan = plan_for(source, "yaml")
    return {
        "project": "p",
        "pipeline": "p",
        "version": "1",
        "source": source,
        "format": "yaml",
        "event": orjson.dumps({"kind": "manual"}).decode(),
        "inputs": "{}",
        "trigger": "manual",
        "actor": "",
        "created_at": "1",
        "status": "queued",
        "group": "",
        "ver": "0",
        "number": "1",
        store.LEGACY_STATE: initial_state(plan, run_id).model_dump_json(),
    }


def _dumps(live: LiveRun) -> tuple[str, dict[str, str]]:
    state = live.engine.state
    return state.model_dump_json(exclude={"jobs"}), {
        k: j.model_dump_json() for k, j in state.jobs.items()
    }


class Agent:
    """Answers the engine's commands in a random order, with random outcomes, lost
    agents, duplicates of earlier events and now and then a cancel of the run."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.todo: list[Event] = []
        self.sent: list[Event] = []
        self.now = 1.0

    def take(self, commands: list[Command]) -> bool:
        for c in commands:
            if isinstance(c, StartJob):
                self.todo.append(JobStarted(job=c.job, attempt=c.attempt, at=self.now))
            elif isinstance(c, RunStep):
                status = self.rng.choice(
                    [Status.SUCCESS] * 6 + [Status.FAILURE, Status.INTERRUPTED]
                )
                self.todo.append(self._done(c.job, c.attempt, c.step.index, status))
            elif isinstance(c, StopJob):
                self.todo.append(
                    JobEnded(job=c.job, attempt=c.attempt, status=Status.CANCELLED, at=self.now)
                )
            elif isinstance(c, RunDone):
                return False
        return True

    def _done(self, job: str, attempt: int, index: int, status: Status) -> StepDone:
        at = self.now
        return StepDone(
            job=job,
            attempt=attempt,
            index=index,
            status=status,
            exit_code=0 if status == Status.SUCCESS else 1,
            outputs={"n": str(index)},
            started_at=at,
            finished_at=at,
        )

    def next(self) -> Event | None:
        self.now += 1
        roll = self.rng.random()
        if roll < 0.02:
            return RunCancelled(at=self.now)
        if roll < 0.1 and self.sent:
            return self.rng.choice(self.sent)  # a duplicate
        if not self.todo:
            return None
        event = self.todo.pop(self.rng.randrange(len(self.todo)))
        if roll < 0.15 and not isinstance(event, RunCancelled):
            event = JobEnded(
                job=event.job, attempt=event.attempt, status=Status.AGENT_LOST, at=self.now
            )
        self.sent.append(event)
        return event


@pytest.mark.parametrize("seed", range(40))
def test_a_change_names_every_job_it_changed(seed: int) -> None:
    """The fields a change writes are exactly what changed: every job whose state
    changed, none that did not, and the stored fields assemble into the engine's state."""
    live = live_run(store.StoredRun("r1", _fields(MIXED)), {})
    stored: dict[str, str] = {}
    first = live.changed_fields([])  # loaded whole: its first commit writes it all
    assert set(first) == {store.RUN_STATE} | {store.JOB + k for k in live.engine.state.jobs}
    stored.update(first)
    live.committed(first)
    agent = Agent(seed)
    before = _dumps(live)
    commands = live.engine.start(agent.now)
    for _ in range(500):
        fields = live.changed_fields(commands)
        run, jobs = _dumps(live)
        changed = {store.JOB + k for k, v in jobs.items() if v != before[1][k]}
        if run != before[0]:
            changed.add(store.RUN_STATE)
        assert set(fields) == changed
        stored.update(fields)
        live.committed(fields)
        whole = store.state_json(stored)
        assert whole is not None
        assert RunState.model_validate_json(whole) == live.engine.state
        if not agent.take(commands):
            break
        event = agent.next()
        if event is None:
            break
        before = run, jobs
        commands = live.engine.apply(event)
    assert live.open_jobs == {k for k, j in live.engine.state.jobs.items() if not j.status.final}


def test_the_whole_state_reads_the_same_split_or_not() -> None:
    whole = _fields(MIXED)[store.LEGACY_STATE]
    split = store.split_state(whole)
    assert set(split) == {"run"} | {f"job:{k}" for k in orjson.loads(whole)["jobs"]}
    assembled = store.state_json(split)
    assert assembled is not None
    assert orjson.loads(assembled) == orjson.loads(whole)
    assert list(orjson.loads(assembled)["jobs"]) == list(orjson.loads(whole)["jobs"])  # order
    assert store.state_json({"state": whole}) == whole
    # a whole state next to split fields was written after them (by an older dispatcher)
    assert store.state_json({**split, "state": "{}"}) == "{}"


# --- on Valkey, through the dispatcher's own commit -----------------------------------

THREE = "name: p\njobs:\n" + "".join(
    f"  {k}:\n    steps: [{{run: x}}, {{run: y}}]\n" for k in ("a", "b", "c")
)
MARK = "untouched"


async def _create(r: aioredis.Redis, run_id: str) -> None:
    fields = _fields(THREE, run_id)
    state = fields.pop(store.LEGACY_STATE)
    for name in ("ver", "number"):
        del fields[name]
    assert await store.create_run(r, Scripts(r), run_id, fields, state) == 1


async def _mark(r: aioredis.Redis, run_id: str, *jobs: str) -> dict[str, str]:
    """Put a marker into these jobs' stored fields (a valid job state, renamed): a
    commit that rewrites the field loses it."""
    key = store.run_key(run_id)
    marked = {}
    for job in jobs:
        value: dict[str, Any] = orjson.loads(await r.hget(key, store.JOB + job) or "{}")
        marked[store.JOB + job] = orjson.dumps({**value, "name": MARK}).decode()
    for field, text in marked.items():
        await r.hset(key, field, text)
    return marked


async def test_a_commit_rewrites_only_the_jobs_it_touched(r: aioredis.Redis, nc: Client) -> None:
    await _create(r, "r1")
    key = store.run_key("r1")
    assert not await r.hexists(key, "state")
    changes = Changes(nc, r, Scripts(r))
    live = await changes.change("r1", lambda e, now: e.start(now))
    assert live is not None and live.version == 1
    marked = await _mark(r, "r1", "b", "c")

    def started(e: Engine, now: float) -> list[Command]:
        return e.apply(JobStarted(job="a", attempt=1, host={"agent": {"id": "ag"}}, at=now))

    live = await changes.change("r1", started)
    assert live is not None and live.version == 2
    stored = await r.hgetall(key)
    assert stored["ver"] == "2"
    assert {f: stored[f] for f in marked} == marked  # b and c were not written
    assert orjson.loads(stored["job:a"])["status"] == "running"
    assert "state" not in stored

    # a reader (and a dispatcher that loads the run afresh) sees the whole run
    loaded = await store.load_run(r, "r1")
    assert loaded is not None and loaded.split
    state = RunState.model_validate_json(loaded.fields["state"])
    assert [j.name for j in state.jobs.values()] == ["a", MARK, MARK]
    assert state.jobs["a"].status == Status.RUNNING
    assert await store.ran_on(r, "r1", "a", 1) == "ag"
    at = state.jobs["a"].started_at
    assert await agent_use.busy(r, "ag", {"p": ["p"]}, since=0) == [(at, None)]


async def test_a_run_stored_whole_still_loads_and_its_next_commit_splits_it(
    r: aioredis.Redis, nc: Client
) -> None:
    key = store.run_key("old")
    fields = _fields(THREE, "old")
    for field, value in fields.items():  # as runs were stored before the split
        await r.hset(key, field, value)
    loaded = await store.load_run(r, "old")
    assert loaded is not None and not loaded.split
    assert loaded.fields["state"] == fields["state"]
    assert await store.ran_on(r, "old", "a", 1) is None
    assert [s for s in await store.load_runs(r, ["old", "gone"]) if s] == [loaded]

    live = await Changes(nc, r, Scripts(r)).change("old", lambda e, now: e.start(now))
    assert live is not None
    stored = await r.hgetall(key)
    assert "state" not in stored and stored["ver"] == "1"
    assert {"run", "job:a", "job:b", "job:c"} <= set(stored)
    again = await store.load_run(r, "old")
    assert again is not None and again.split
    assert RunState.model_validate_json(again.fields["state"]) == live.engine.state


async def test_a_lost_compare_and_set_writes_nothing(r: aioredis.Redis, nc: Client) -> None:
    """Another replica moved the run on: the commit writes no field, and the change is
    applied again to the state that replica stored."""
    await _create(r, "r1")
    mine, theirs = Changes(nc, r, Scripts(r)), Changes(nc, r, Scripts(r))
    assert await mine.change("r1", lambda e, now: e.start(now)) is not None
    assert await mine.load("r1") is not None  # kept loaded, at version 1
    cancelled = time.time()
    await theirs.change("r1", lambda e, now: e.apply(RunCancelled(at=cancelled)))
    live = await mine.change("r1", lambda e, now: e.apply(RunCancelled(at=now)))
    assert live is not None and live.version == 2  # reloaded: the cancel changed nothing more
    loaded = await store.load_run(r, "r1")
    assert loaded is not None
    state = RunState.model_validate_json(loaded.fields["state"])
    assert state.cancelled and state.status == Status.CANCELLED
    assert all(j.status == Status.CANCELLED for j in state.jobs.values())
