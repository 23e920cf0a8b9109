"""What has happened in a run: plain data that serialises to JSON and back, so the
dispatcher can store it and a restarted process can continue from it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from schemas.status import Status


class StepState(BaseModel):
    index: int
    id: str
    name: str
    status: Status = Status.QUEUED
    exit_code: int | None = None
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def failed(self) -> bool:
        return self.status in (
            Status.FAILURE,
            Status.TIMED_OUT,
            Status.AGENT_LOST,
            Status.INTERRUPTED,
        )


class AttemptState(BaseModel):
    """An earlier attempt of a job, kept as it ended when the job was retried; its
    steps' logs stay readable under its number."""

    attempt: int
    status: Status
    error: str | None = None
    agent: dict[str, Any] | None = None  # the agent context it ran on (id, name, …)
    steps: list[StepState] = []
    started_at: float | None = None
    finished_at: float | None = None


class ReusedFrom(BaseModel):
    """The earlier run a job's success was carried over from (a re-run of failed jobs);
    its steps' logs are that run's."""

    run: str
    number: int = 0
    attempt: int = 1  # the attempt there whose steps (and logs) these are


class JobState(BaseModel):
    key: str
    job_id: str
    name: str
    matrix: dict[str, Any] = {}
    status: Status = Status.QUEUED
    attempt: int = 1
    ready: bool = False  # StartJob was issued for this attempt
    first_sent: bool = False  # ... with its first step (Engine's `send_first`)
    cancel_requested: bool = False
    steps: list[StepState] = []
    outputs: dict[str, Any] = {}
    error: str | None = None
    host: dict[str, Any] = {}  # agent / machine / python contexts of where it runs
    started_at: float | None = None
    finished_at: float | None = None
    attempts: list[AttemptState] = []  # earlier attempts, oldest first
    reused_from: ReusedFrom | None = None  # carried over, never sent to an agent


class RunState(BaseModel):
    id: str
    status: Status = Status.QUEUED
    cancelled: bool = False
    jobs: dict[str, JobState] = {}
    started_at: float | None = None
    finished_at: float | None = None
