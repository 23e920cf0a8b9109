"""Every message on every subject (DESIGN.md §4), encoded with orjson.

Each carries `v` (the protocol version) and a `type` tag, so one subject can carry
several kinds and readers can reject what they do not understand. Unknown fields are
ignored, so a newer sender does not break an older reader.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.pipeline import ActionRef
from schemas.status import Status

PROTOCOL_VERSION = 1


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))


class OfAttempt(Message):
    """A message about one attempt of one job of a run."""

    run: str
    job: str
    attempt: int = 1


# --- trigger events (ry.events.<kind>.<project>) ------------------------------------


class PullRequestInfo(BaseModel):
    number: int
    action: str
    base: str
    head: str
    head_sha: str | None = None


class TriggerEvent(Message):
    """One thing that may start runs: a button press, a cron tick, a git push, …"""

    type: Literal["trigger"] = "trigger"
    id: str = Field(description="idempotency key; also the Nats-Msg-Id")
    kind: Literal[
        "manual",
        "cron",
        "push",
        "tag",
        "pull_request",
        "release",
        "webhook",
        "pipeline",
        "annotator",
    ]
    project: str
    pipeline: str | None = Field(None, description="set when the event targets one pipeline")
    repository: str | None = Field(None, description="clone URL")
    ref: str | None = None
    branch: str | None = None
    tag: str | None = None
    sha: str | None = None
    before: str | None = None
    paths: list[str] = []
    paths_known: bool = Field(True, description="False when the host sends no changed files")
    actor: str | None = None
    pull_request: PullRequestInfo | None = None
    fork: bool = Field(
        False,
        description="the code is a fork's pull request (or a run of one started this): "
        "the run gets no secrets unless its pipeline opts in",
    )
    inputs: dict[str, Any] = {}
    payload: dict[str, Any] = Field({}, description="the raw payload, for ${{ event.* }}")
    upstream_run: str | None = None
    upstream_outputs: dict[str, Any] = {}
    rerun_of: str | None = Field(None, description="the run this one runs again")
    failed_only: bool = Field(
        False,
        description="with rerun_of: the jobs that succeeded there are carried over "
        "(with their outputs) and only the others run",
    )
    created_at: float


# --- dispatcher → agent (ry.agent.<id>.inbox) ---------------------------------------


class ArtifactSpec(BaseModel):
    name: str
    path: list[str]
    if_failed: bool = False


class ResolvedStep(BaseModel):
    """A step with every expression evaluated: what a runner executes. The engine makes
    it (runyard/engine/machine.py), `step.assign` carries it as is to the agent."""

    # Validated even where the engine makes it: ~2 µs more than the frozen dataclass it
    # was, against ≥80 µs of engine work per step (model_construct saves nothing here).
    model_config = ConfigDict(extra="ignore", frozen=True)

    index: int
    id: str
    name: str
    script: str | None = Field(None, description="the `run:` script, ready to run")
    shell: str = "bash"
    action: ActionRef | None = None
    inputs: dict[str, Any] = {}
    env: dict[str, str] = {}
    working_directory: str | None = None
    timeout: float | None = Field(None, description="seconds")
    cache: bool = False
    mask: list[str] = Field([], description="values to mask in logs (secrets)")


class JobAssign(OfAttempt):
    type: Literal["job.assign"] = "job.assign"
    project: str
    pipeline: str
    repository: str | None = None
    sha: str | None = None
    ref: str | None = None
    env: dict[str, str] = {}
    timeout: float | None = Field(None, description="seconds")
    first: ResolvedStep | None = Field(
        None, description="its first step: start it once claimed, no `step.assign` follows"
    )


class StepAssign(OfAttempt):
    """Run this step of the attempt now (the job's steps come one at a time)."""

    type: Literal["step.assign"] = "step.assign"
    step: ResolvedStep


class JobFinish(OfAttempt):
    """The job's steps are over: collect artifacts, clean up, free the slot."""

    type: Literal["job.finish"] = "job.finish"
    status: Status
    artifacts: list[ArtifactSpec] = []
    test_results: list[str] = []
    artifact_limit: int = Field(1 << 30, description="bytes per artifact")


InboxMessage = Annotated[JobAssign | StepAssign | JobFinish, Field(discriminator="type")]

# --- agent → dispatcher (ry.agent.<id>.events) --------------------------------------


class JobClaimed(OfAttempt):
    type: Literal["job.claimed"] = "job.claimed"
    agent: str
    workspace: str
    host: dict[str, Any] = Field({}, description="agent, machine and python contexts")
    first: bool = Field(False, description="`job.assign` had the first step: it runs")
    at: float


class TestSummary(BaseModel):
    total: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    duration: float = 0.0
    failures: list[dict[str, str]] = []


class StepOutcome(BaseModel):
    """How a step ended; the engine's `StepDone` event carries the same fields."""

    status: Status
    exit_code: int | None = None
    outputs: dict[str, Any] = {}
    error: str | None = None
    started_at: float
    finished_at: float


class StepFinished(OfAttempt, StepOutcome):
    type: Literal["step.finished"] = "step.finished"
    agent: str
    index: int
    step: str
    host: dict[str, Any] = Field(
        {}, description="as the claim's, with the result of a step sent with `job.assign`"
    )


class ArtifactFile(BaseModel):
    """One stored file of an artifact: object `<run>/<job>/<artifact>/<path>`."""

    artifact: str
    path: str
    object: str
    size: int
    sha256: str


class JobFinished(OfAttempt):
    type: Literal["job.finished"] = "job.finished"
    agent: str
    status: Status
    artifacts: list[ArtifactFile] = []
    tests: TestSummary | None = None
    errors: list[str] = Field([], description="artifacts or test results that failed")
    at: float


AgentEvent = Annotated[JobClaimed | StepFinished | JobFinished, Field(discriminator="type")]

# --- heartbeats and control (core NATS) ---------------------------------------------


class Gpu(BaseModel):
    name: str
    memory_total: int
    memory_used: int
    utilization: float


class Metrics(BaseModel):
    os: str
    python: str
    cpu_count: int
    cpu_percent: float
    load: tuple[float, float, float]
    memory_total: int
    memory_used: int
    disk_total: int
    disk_free: int
    gpus: list[Gpu] = []


class Heartbeat(Message):
    type: Literal["heartbeat"] = "heartbeat"
    agent: str
    slots: int
    free_slots: int
    jobs: list[str] = Field([], description="run|job|attempt keys this agent holds now")
    inbox_checked: float | None = Field(
        None,
        description="seconds since the agent last found its inbox empty on its current "
        "connection (None: not yet): every assignment published before then has reached it",
    )
    events_seq: int | None = Field(
        None,
        description="RY_AGENT's sequence number of the last event this agent had stored "
        "when it sent the heartbeat (None: none yet)",
    )
    metrics: Metrics
    at: float


class Cancel(OfAttempt):
    """Stop a job (or one step of it) now: TERM the process group, KILL after grace."""

    type: Literal["cancel"] = "cancel"
    step: str | None = None
    reason: Literal["cancelled", "timed-out"] = "cancelled"
    grace: float = 10.0


class JobRevoked(OfAttempt):
    """This agent no longer holds the attempt (it was lost, then came back, or the
    attempt ended without it): kill the job's processes at once and report nothing more
    for it. Sent in answer to a late event or a heartbeat that lists the attempt."""

    type: Literal["job.revoked"] = "job.revoked"
    attempt: int  # no default: always named


class AgentRemoved(Message):
    """This agent was removed on the server: its credentials no longer work, so it
    stops instead of reconnecting in vain."""

    type: Literal["agent.removed"] = "agent.removed"
    agent: str


ControlMessage = Annotated[Cancel | JobRevoked | AgentRemoved, Field(discriminator="type")]


class RunCancel(Message):
    """Cancel a run (API → dispatcher, through RY_EVENTS so it survives a restart)."""

    type: Literal["run.cancel"] = "run.cancel"
    run: str
    by: str | None = None
    at: float


class LogLine(BaseModel):
    seq: int
    at: float
    stream: Literal["out", "err"]
    text: str


class LogBatch(OfAttempt):
    """Lines of one step, in order (ry.agent.<id>.logs.<run>.<job>.<step>)."""

    type: Literal["log.batch"] = "log.batch"
    agent: str
    step: str
    lines: list[LogLine]
    final: bool = Field(False, description="the step's last batch: its log is complete")
    total: int | None = Field(None, description="on the final batch: lines in the whole log")


EventsMessage = Annotated[TriggerEvent | RunCancel, Field(discriminator="type")]

_inbox = TypeAdapter[InboxMessage](InboxMessage)
_agent_events = TypeAdapter[AgentEvent](AgentEvent)
_events = TypeAdapter[EventsMessage](EventsMessage)
_control = TypeAdapter[ControlMessage](ControlMessage)


def decode_inbox(data: bytes) -> JobAssign | StepAssign | JobFinish:
    return _inbox.validate_json(data)


def decode_event(data: bytes) -> TriggerEvent | RunCancel:
    return _events.validate_json(data)


def decode_agent_event(data: bytes) -> JobClaimed | StepFinished | JobFinished:
    return _agent_events.validate_json(data)


def decode_control(data: bytes) -> Cancel | JobRevoked | AgentRemoved:
    return _control.validate_json(data)
