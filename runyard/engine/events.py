"""What drives the engine (events in) and what it asks for (commands out).

Events are data the dispatcher can log and replay; an event for an old attempt, or for a
step that already ended, changes nothing, so redelivered messages are harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

# ResolvedStep is what `step.assign` carries: one model for the engine and the wire
from schemas.messages import ResolvedStep as ResolvedStep
from schemas.messages import StepOutcome
from schemas.status import Status

# --- events -------------------------------------------------------------------------


class JobStarted(BaseModel):
    """The job is placed and its workspace is ready; `host` feeds agent/machine/python."""

    kind: Literal["job.started"] = "job.started"
    job: str
    attempt: int
    host: dict[str, Any] = {}
    first: bool = False  # the agent got the job's first step with it (StartJob.first)
    at: float


class StepDone(StepOutcome):
    kind: Literal["step.done"] = "step.done"
    job: str
    attempt: int
    index: int
    # the agent's contexts, with the result of a step sent with the job's assignment
    # (it may come before the job's claim)
    host: dict[str, Any] = Field(default_factory=dict)


class JobEnded(BaseModel):
    """The job ended from outside its steps: agent lost, agent restarted without it
    (interrupted), job timeout, forced cancel."""

    kind: Literal["job.ended"] = "job.ended"
    job: str
    attempt: int
    status: Literal[Status.AGENT_LOST, Status.INTERRUPTED, Status.TIMED_OUT, Status.CANCELLED]
    error: str | None = None
    at: float


class RunCancelled(BaseModel):
    kind: Literal["run.cancelled"] = "run.cancelled"
    at: float


Event = Annotated[JobStarted | StepDone | JobEnded | RunCancelled, Field(discriminator="kind")]

# --- commands -----------------------------------------------------------------------


@dataclass(frozen=True)
class StartJob:
    job: str
    attempt: int
    runs_on: list[str]
    timeout: float | None  # seconds
    first: ResolvedStep | None = None  # its first step, to go with the assignment


@dataclass(frozen=True)
class RunStep:
    job: str
    attempt: int
    step: ResolvedStep


@dataclass(frozen=True)
class StopJob:
    """Stop the job's running step now (process group TERM, then KILL)."""

    job: str
    attempt: int
    reason: Status


@dataclass(frozen=True)
class FinishJob:
    """The job's steps are over: collect artifacts and test results, free the slot."""

    job: str
    attempt: int
    status: Status


@dataclass(frozen=True)
class RunDone:
    status: Status


Command = StartJob | RunStep | StopJob | FinishJob | RunDone
