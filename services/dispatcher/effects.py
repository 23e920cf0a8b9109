"""Engine commands → what the dispatcher must do, as data (no I/O).

Everything here is written in one compare-and-set commit together with the run's new
state, so a dispatcher that dies right after the commit leaves nothing half done: the
outbox is re-sent (each message has a `Nats-Msg-Id`, so a re-send is dropped), queue
entries and timers are already in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from runyard.engine.events import (
    Command,
    FinishJob,
    RunDone,
    RunStep,
    StartJob,
    StopJob,
)
from runyard.engine.plan import Plan
from runyard.engine.state import JobState, RunState
from schemas import subjects
from schemas.messages import (
    ArtifactSpec,
    Cancel,
    JobAssign,
    JobFinish,
    StepAssign,
    TriggerEvent,
)
from schemas.status import Status

# An agent enforces step timeouts itself; the dispatcher gives up on a silent one later.
SILENT_AGENT_SLACK = 60.0
CANCEL_GRACE = 10.0  # TERM → KILL on the agent
CANCEL_SLACK = 15.0  # then the dispatcher ends the job itself
ARTIFACT_LIMIT = 1 << 30  # bytes per artifact, fixed (docs/logs-artifacts.md)


@dataclass(frozen=True)
class RunFacts:
    """What the dispatcher knows of a run beyond the engine's state."""

    id: str
    project: str
    pipeline: str
    repository: str | None
    sha: str | None
    ref: str | None
    artifact_limit: int = ARTIFACT_LIMIT
    fork: bool = False  # it builds a fork's code: chained runs inherit that


@dataclass
class Effects:
    outbox: list[tuple[str, str, bytes]] = field(default_factory=list)  # id, subject, data
    control: list[tuple[str, bytes]] = field(default_factory=list)  # core NATS: subject, data
    enqueue: list[tuple[str, float, str]] = field(default_factory=list)  # member, score, info
    dequeue: list[str] = field(default_factory=list)
    timers: list[tuple[str, float]] = field(default_factory=list)  # member, deadline
    untimers: list[str] = field(default_factory=list)
    done: Status | None = None
    # the `pipeline` event of a run that ended: sent only if some pipeline chains after it
    chain: tuple[str, str, bytes] | None = None
    # queued jobs to place on an agent in the same commit: member → agent, when it has
    # a free slot and nothing else waits in the queue
    place: dict[str, str] = field(default_factory=dict)
    # member → its `job.assign` with its first step, sent only if placed in this commit:
    # it holds secrets, which the queue must not keep (placed later, it goes without)
    firsts: dict[str, bytes] = field(default_factory=dict)

    def to_json(self) -> str:
        """The part the commit script applies (the outbox entries carry their subject)."""
        return orjson.dumps(
            {
                "outbox": [[i, pack(s, d)] for i, s, d in self.outbox],
                "enqueue": [list(e) for e in self.enqueue],
                "place": [[m, self.place[m], *_packed(self.assignment(m))] for m in self.place],
                "dequeue": self.dequeue,
                "timers": [list(t) for t in self.timers],
                "untimers": self.untimers,
            }
        ).decode()

    def assignment(self, m: str) -> tuple[str, str, bytes]:
        """The outbox entry that sends queued job `m` to the agent chosen for it."""
        assign = self.firsts.get(m)
        if assign is None:
            info = next(i for e, _, i in self.enqueue if e == m)
            assign = str(decode_info(info)["assign"]).encode()
        return assign_entry(m, self.place[m], assign)


def assign_entry(m: str, agent: str, assign: bytes) -> tuple[str, str, bytes]:
    """The outbox entry (id, subject, data) that gives job attempt `m` to `agent`."""
    return "assign:" + m, subjects.agent_inbox(agent), assign


def _packed(entry: tuple[str, str, bytes]) -> tuple[str, str]:
    msg_id, subject, data = entry
    return msg_id, pack(subject, data)


def pack(subject: str, data: bytes) -> str:
    return orjson.dumps({"s": subject, "d": data.decode()}).decode()


def unpack(entry: str) -> tuple[str, bytes]:
    value = orjson.loads(entry)
    return value["s"], value["d"].encode()


member = subjects.attempt_member  # queue, placement and timer members


def parse_member(value: str) -> tuple[str, str, int, list[str]]:
    run, job, attempt, *more = value.split("|")
    return run, job, int(attempt), more


def timer(kind: str, run: str, job: str, attempt: int, *more: object) -> str:
    return f"{kind}|{member(run, job, attempt, *more)}"


def agent_of(job: JobState) -> str | None:
    agent = job.host.get("agent")
    return str(agent["id"]) if isinstance(agent, dict) and agent.get("id") else None


def job_assign(facts: RunFacts, command: StartJob) -> JobAssign:
    return JobAssign(
        run=facts.id,
        job=command.job,
        attempt=command.attempt,
        project=facts.project,
        pipeline=facts.pipeline,
        repository=facts.repository,
        sha=facts.sha,
        ref=facts.ref,
        timeout=command.timeout,
    )


def queue_info(facts: RunFacts, command: StartJob, assign: JobAssign) -> str:
    return orjson.dumps(
        {"project": facts.project, "runs_on": command.runs_on, "assign": assign.encode().decode()}
    ).decode()


def translate(
    commands: list[Command], plan: Plan, state: RunState, facts: RunFacts, now: float
) -> Effects:
    fx = Effects()
    for command in commands:
        if isinstance(command, StartJob):
            m = member(facts.id, command.job, command.attempt)
            assign = job_assign(facts, command)
            fx.enqueue.append((m, now, queue_info(facts, command, assign)))
            if command.first is not None:
                fx.firsts[m] = assign.model_copy(update={"first": command.first}).encode()
        elif isinstance(command, RunStep):
            _run_step(fx, command, state, facts, now)
        elif isinstance(command, StopJob):
            _stop_job(fx, command, state, facts, now)
        elif isinstance(command, FinishJob):
            _finish_job(fx, command, plan, state, facts)
        elif isinstance(command, RunDone):
            fx.done = command.status
            fx.chain = _chain(state, facts, command.status, now)
    return fx


def job_started(
    fx: Effects, facts: RunFacts, job: str, attempt: int, timeout: float | None, now: float
) -> None:
    """The agent claimed the job: its own timeout starts now."""
    if timeout:
        fx.timers.append((timer("job", facts.id, job, attempt), now + timeout))


def _run_step(fx: Effects, command: RunStep, state: RunState, facts: RunFacts, now: float) -> None:
    agent = agent_of(state.jobs[command.job])
    if agent is None:  # cannot happen: steps run only after the agent's claim
        return
    step = command.step
    msg = StepAssign(run=facts.id, job=command.job, attempt=command.attempt, step=step)
    msg_id = "step:" + member(facts.id, command.job, command.attempt, step.index)
    fx.outbox.append((msg_id, subjects.agent_inbox(agent), msg.encode()))
    if step.timeout:
        deadline = now + step.timeout + CANCEL_GRACE + SILENT_AGENT_SLACK
        fx.timers.append(
            (timer("step", facts.id, command.job, command.attempt, step.index), deadline)
        )


def _stop_job(fx: Effects, command: StopJob, state: RunState, facts: RunFacts, now: float) -> None:
    job = state.jobs[command.job]
    agent = agent_of(job)
    fx.dequeue.append(member(facts.id, command.job, command.attempt))
    if agent is None or job.status.final:
        return
    reason = "timed-out" if command.reason == Status.TIMED_OUT else "cancelled"
    cancel = Cancel(
        run=facts.id, job=command.job, attempt=command.attempt, reason=reason, grace=CANCEL_GRACE
    )
    fx.control.append((subjects.agent_control(agent), cancel.encode()))
    fx.timers.append(
        (timer("stop", facts.id, command.job, command.attempt), now + CANCEL_GRACE + CANCEL_SLACK)
    )


def _finish_job(
    fx: Effects, command: FinishJob, plan: Plan, state: RunState, facts: RunFacts
) -> None:
    job = state.jobs[command.job]
    # the next attempt (a retry) has been reset already; the finished one had these steps
    fx.dequeue.append(member(facts.id, command.job, command.attempt))
    fx.untimers.append(timer("job", facts.id, command.job, command.attempt))
    fx.untimers.append(timer("stop", facts.id, command.job, command.attempt))
    fx.untimers += [
        timer("step", facts.id, command.job, command.attempt, s.index) for s in job.steps
    ]
    # a retry's reset keeps `host` until the next claim, so this is the attempt's agent;
    # a lost one is not asked to finish: if it comes back, it is told the attempt is
    # no longer its own (job.revoked), and cleans up without reporting
    agent = agent_of(job)
    if agent is not None and command.status != Status.AGENT_LOST:
        spec = plan.jobs[command.job].spec
        finish = JobFinish(
            run=facts.id,
            job=command.job,
            attempt=command.attempt,
            status=command.status,
            artifacts=[
                ArtifactSpec(name=a.name, path=a.path, if_failed=a.if_failed)
                for a in spec.artifacts
            ],
            test_results=spec.test_results,
            artifact_limit=facts.artifact_limit,
        )
        msg_id = "finish:" + member(facts.id, command.job, command.attempt)
        fx.outbox.append((msg_id, subjects.agent_inbox(agent), finish.encode()))


def _chain(state: RunState, facts: RunFacts, status: Status, now: float) -> tuple[str, str, bytes]:
    """The event that starts pipelines chained after this one (`triggers.pipeline`)."""
    outputs: dict[str, Any] = {}
    for job in state.jobs.values():
        outputs.update(job.outputs)
    event = TriggerEvent(
        id=f"chain:{facts.id}",
        kind="pipeline",
        project=facts.project,
        repository=facts.repository,
        sha=facts.sha,
        ref=facts.ref,
        payload={"pipeline": facts.pipeline, "status": str(status), "run": facts.id},
        upstream_run=facts.id,
        upstream_outputs=outputs,
        fork=facts.fork,
        created_at=now,
    )
    return event.id, subjects.events("pipeline", facts.project), event.encode()


def decode_info(info: str) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(info)
    return value
