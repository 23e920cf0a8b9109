"""What agents send: claims, step and job results (on `RY_AGENT`), believed only from
the agent holding the attempt (fencing.py), and heartbeats, which keep the agent online
and reconcile the attempts it holds with the placements."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from nats.aio.msg import Msg

from runyard.engine.events import Command, JobEnded, JobStarted, StepDone
from runyard.engine.machine import Engine
from schemas import subjects
from schemas.messages import (
    Heartbeat,
    JobClaimed,
    JobFinish,
    JobFinished,
    JobRevoked,
    StepFinished,
    decode_agent_event,
)
from schemas.status import Status
from services.dispatcher import effects, fencing
from services.dispatcher.admission import Admission
from services.dispatcher.changes import Changes, NotHolder, applying
from services.dispatcher.placer import Placer
from services.dispatcher.runs import LiveRun
from services.store import records
from services.store import runs as store
from services.store.connection import strs

log = logging.getLogger("runyard.dispatcher")

RUN_ARTIFACT_LIMIT = 5 << 30  # bytes of artifacts per run


def subject_agent(subject: str) -> str:
    """`ry.agent.<id>.…` → `<id>`."""
    parts = subject.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "agent" else ""


def step_done(event: StepFinished) -> StepDone:
    """The wire message → the engine's event (the one place the two meet)."""
    fields = event.model_dump(include=set(StepDone.model_fields))
    return StepDone.model_validate({**fields, "host": own_host(event.host, event.agent)})


def own_host(host: dict[str, Any], agent: str) -> dict[str, Any]:
    """An agent's contexts as it sent them, but naming itself: the job's next steps go
    to the agent the `agent` context names (the sender is checked against the holder)."""
    told = host.get("agent")
    return {**host, "agent": {**(told if isinstance(told, dict) else {}), "id": agent}}


class Agents:
    def __init__(self, changes: Changes, placer: Placer, admission: Admission | None) -> None:
        self.changes = changes
        self.placer = placer
        self.admission = admission
        self.r = changes.r
        self.nc = changes.nc

    # --- agent events ---------------------------------------------------------------

    async def on_event(self, msg: Msg) -> None:
        """Only the agent that holds the attempt may report on it: nats-server lets an
        agent publish on its own subject alone, so the subject names the sender, and
        the holder is checked by the commit (or release) the event makes."""
        try:
            event = decode_agent_event(msg.data)
        except ValueError as exc:
            log.error("dropping an unreadable agent event on %s: %s", msg.subject, exc)
            return
        sender = subject_agent(msg.subject)
        if sender != event.agent:
            log.warning("dropped %s for agent %s sent by %s", event.type, event.agent, sender)
            return
        fence = (effects.member(event.run, event.job, event.attempt), sender)
        try:
            if isinstance(event, JobClaimed):
                await self._claimed(event, fence)
            elif isinstance(event, StepFinished):
                done = step_done(event)
                await self.changes.change(event.run, lambda e, now: e.apply(done), fence=fence)
            else:
                await self._job_finished(event)
        except NotHolder as refused:
            await self._refuse(event, refused.holder)

    async def _refuse(
        self, event: JobClaimed | StepFinished | JobFinished, holder: str | None
    ) -> None:
        """An event from an agent that does not hold its attempt: dropped, and that
        agent must stop the job; kept with the run when the attempt was taken from it
        or another agent holds it."""
        m = effects.member(event.run, event.job, event.attempt)
        log.warning(
            "dropped %s for %s from agent %s: the attempt is held by %s",
            event.type,
            m,
            event.agent,
            holder or "nobody",
        )
        await self.revoke(event.agent, event.run, event.job, event.attempt)
        if holder is not None or await self._taken_away(event.run, event.job, event.attempt):
            report = fencing.event_report(event, time.time())
            await store.record_stale(self.r, event.run, fencing.report_field(report), report)

    async def revoke(self, agent: str, run: str, job: str, attempt: int) -> None:
        revoked = JobRevoked(run=run, job=job, attempt=attempt)
        await self.nc.publish(subjects.agent_control(agent), revoked.encode())

    async def _taken_away(self, run: str, job: str, attempt: int) -> bool:
        live = await self.changes.load(run)
        state = live.engine.state.jobs.get(job) if live is not None else None
        return state is not None and fencing.taken_away(state, attempt)

    async def _claimed(self, event: JobClaimed, fence: tuple[str, str]) -> None:
        stale = True

        def apply(engine: Engine, now: float) -> list[Command]:
            nonlocal stale
            job = engine.state.jobs.get(event.job)
            stale = job is None or job.attempt != event.attempt or job.status.final
            started = JobStarted(
                job=event.job,
                attempt=event.attempt,
                host=own_host(event.host, event.agent),
                first=event.first,
                at=event.at,
            )
            return engine.apply(started)

        def timer(live: LiveRun, fx: effects.Effects, now: float) -> None:
            plan = live.engine.plan.jobs.get(event.job)
            if not stale and plan is not None and plan.spec.timeout:
                effects.job_started(
                    fx, live.facts, event.job, event.attempt, plan.spec.timeout * 60, now
                )

        live = await self.changes.change(event.run, apply, timer, fence)
        if live is None or stale:
            # a claim for an attempt that is over (cancelled while placed): let it go
            finish = JobFinish(
                run=event.run, job=event.job, attempt=event.attempt, status=Status.CANCELLED
            )
            msg_id = "finish:" + effects.member(event.run, event.job, event.attempt)
            inbox = subjects.agent_inbox(event.agent)
            await self.changes.send_outbox([(msg_id, inbox, finish.encode())])

    async def _job_finished(self, event: JobFinished) -> None:
        m = effects.member(event.run, event.job, event.attempt)
        holder = await self.placer.release(event.agent, m)
        if holder != event.agent:
            raise NotHolder(holder)
        self.placer.kick.set()
        await self._record_outputs(event)

    async def _record_outputs(self, event: JobFinished) -> None:
        """Artifacts, test summary and their problems, kept with the run by job."""
        prefix = f"{event.run}/{event.job}/"
        bucket = subjects.agent_artifacts_bucket(event.agent)
        files = [f for f in event.artifacts if f.object.startswith(prefix)]
        errors = list(event.errors)
        size = sum(f.size for f in files)
        if size:
            total = await self.r.hincrby(store.run_key(event.run), "artifact_bytes", size)
            if total > RUN_ARTIFACT_LIMIT:
                await self.r.hincrby(store.run_key(event.run), "artifact_bytes", -size)
                objects = await self.changes.js.object_store(bucket)
                for f in files:
                    with contextlib.suppress(Exception):
                        await objects.delete(f.object)
                errors.append(
                    f"artifacts of {event.job} ({size} bytes) would take the run over "
                    f"its limit of {RUN_ARTIFACT_LIMIT} bytes; deleted"
                )
                files = []
        tests = event.tests.model_dump() if event.tests else None
        if tests and (live := await self.changes.load(event.run)) is not None:
            # a failure's message and text are the test's output: they may show a secret
            tests["failures"] = live.engine.masked(tests["failures"])
        record = {
            "attempt": event.attempt,
            "artifacts": [{**f.model_dump(), "bucket": bucket} for f in files],
            "tests": tests,
            "errors": errors,
        }
        await self.r.hset(store.run_key(event.run), f"finished:{event.job}", store.dumps(record))

    # --- heartbeats -----------------------------------------------------------------

    async def on_heartbeat(self, msg: Msg) -> None:
        """One script stores the heartbeat and reconciles what the agent holds without
        taking anything back (one round trip); `_reconcile` follows only when it names
        placements the agent no longer runs or runs without holding them. The placer
        is kicked only when jobs wait and this agent came online or has a slot free
        that it had not, or when `_reconcile` took a placement back."""
        try:
            hb = Heartbeat.model_validate_json(msg.data)
            if hb.agent != subject_agent(msg.subject):
                log.warning("dropped a heartbeat for %s sent on %s", hb.agent, msg.subject)
                return
            now = time.time()
            mem = hb.metrics.memory_used / max(hb.metrics.memory_total, 1) * 100
            history = store.dumps({"at": hb.at, "cpu": hb.metrics.cpu_percent, "mem": mem})
            reported = store.dumps(hb.jobs)
            cutoff = fencing.reconcile_cutoff(hb, now)
            came, kick, gone, stale = await self.changes.scripts.heartbeat(
                keys=[
                    records.agent_key(hb.agent),
                    store.ONLINE,
                    records.agent_key(hb.agent, "metrics"),
                    store.PLACEMENTS,
                    records.agent_key(hb.agent, "jobs"),
                    store.PLACED,
                    store.QUEUE,
                ],
                args=[
                    now,
                    records.AGENT_TTL,
                    history,
                    records.METRIC_HISTORY,
                    hb.agent,
                    hb.slots,
                    hb.metrics.model_dump_json(),
                    reported,
                    cutoff,
                    *hb.jobs,
                ],
            )
            if came != -1 and (gone or stale):
                kick = await self._reconcile(hb, reported, cutoff, gone, stale) or kick
        except Exception as exc:
            log.warning("heartbeat on %s: %s", msg.subject, exc)
            return
        if came == -1 and self.admission is not None:  # removed while connected
            await self.admission.revoke(hb.agent)
        if kick:
            self.placer.kick.set()

    async def _reconcile(
        self, hb: Heartbeat, reported: str, cutoff: float, gone: list[str], stale: list[str]
    ) -> bool:
        """Trust the agent's list of the attempts it holds: placements it no longer
        runs end `interrupted` (their slots are free at once), and attempts it runs but
        no longer holds are revoked. True when a slot was freed."""
        now = time.time()
        if gone:  # take them back once every event the agent had sent is handled
            gone = []
            if await self._caught_up(hb.events_seq):
                keys = [
                    store.PLACEMENTS,
                    records.agent_key(hb.agent),
                    records.agent_key(hb.agent, "jobs"),
                    store.PLACED,
                ]
                take: list[str | float] = [hb.agent, reported, cutoff, 1]
                gone, stale = await self.changes.scripts.reconcile(keys=keys, args=take)
        for m in strs(gone):
            run, job, attempt, _ = effects.parse_member(m)
            log.warning("agent %s no longer runs %s (it restarted without it)", hb.agent, m)
            ended = JobEnded(
                job=job,
                attempt=attempt,
                status=Status.INTERRUPTED,
                error=f"agent {hb.agent} restarted and no longer runs this attempt",
                at=now,
            )
            await self.changes.change(run, applying(ended))
        for m in strs(stale):
            run, job, attempt, _ = effects.parse_member(m)
            log.warning("agent %s still runs %s, which it no longer holds: revoked", hb.agent, m)
            await self.revoke(hb.agent, run, job, attempt)
            if await self._taken_away(run, job, attempt):
                report = fencing.heartbeat_report(job, attempt, hb.agent, now)
                await store.record_stale(self.r, run, fencing.report_field(report), report)
        return bool(gone)

    async def _caught_up(self, seq: int | None) -> bool:
        """Whether every agent event up to stream sequence `seq` has been handled (a
        `job.finished` the agent sent before its heartbeat must not find its attempt
        taken away)."""
        if seq is None:
            return True
        info = await self.changes.js.consumer_info(
            subjects.AGENT_STREAM.name, subjects.DISPATCHER_AGENT_CONSUMER
        )
        return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq
