"""Carried jobs: a re-run of failed jobs starts with the jobs that succeeded in the run
it repeats already done, with their outputs, so only the rest run again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runyard.engine.contexts import FAILED
from runyard.engine.plan import Plan
from runyard.engine.state import JobState, ReusedFrom, RunState, StepState
from schemas.status import Status


@dataclass(frozen=True)
class Carried:
    """A job instance's success in an earlier run: its outputs and where it ran."""

    outputs: dict[str, Any]
    run: str
    number: int = 0
    steps: list[StepState] = field(default_factory=list)  # as they ended there
    attempt: int = 1  # the attempt there that succeeded


def succeeded(original: RunState, number: int = 0) -> dict[str, Carried]:
    """The job instances that succeeded in `original`. One it had carried itself keeps
    pointing at the run where it really ran (the logs are there)."""
    found = {}
    for key, job in original.jobs.items():
        if job.status != Status.SUCCESS:
            continue
        source = job.reused_from or ReusedFrom(run=original.id, number=number, attempt=job.attempt)
        found[key] = Carried(
            dict(job.outputs), source.run, source.number, list(job.steps), source.attempt
        )
    return found


def failed_any(original: RunState) -> bool:
    """Whether there is anything for a re-run of failed jobs to run: a job failed or
    was cancelled (one skipped by its `if:` alone is no reason)."""
    return any(job.status in (*FAILED, Status.CANCELLED) for job in original.jobs.values())


def apply(plan: Plan, state: RunState, carried: Mapping[str, Carried]) -> None:
    """Mark the carried jobs of a new run's state as succeeded. A job is carried only
    when every instance of every job it needs is carried too: one that depends on a job
    that runs again must run again (the plan's jobs are in needs order, so one pass)."""
    kept: set[str] = set()
    for key, job_plan in plan.jobs.items():
        given = carried.get(key)
        if given is None:
            continue
        needed = [k for need in job_plan.needs for k in plan.instances.get(need, [])]
        if not all(k in kept for k in needed):
            continue
        kept.add(key)
        _mark(state.jobs[key], given)


def _mark(job: JobState, given: Carried) -> None:
    job.status = Status.SUCCESS
    job.outputs = dict(given.outputs)
    job.reused_from = ReusedFrom(run=given.run, number=given.number, attempt=given.attempt)
    if [s.id for s in given.steps] == [s.id for s in job.steps]:
        job.steps = [s.model_copy(deep=True) for s in given.steps]
    else:  # the steps changed: none of these ran
        for step in job.steps:
            step.status = Status.SKIPPED
    started = [s.started_at for s in job.steps if s.started_at is not None]
    finished = [s.finished_at for s in job.steps if s.finished_at is not None]
    job.started_at = min(started, default=None)
    job.finished_at = max(finished, default=None)
