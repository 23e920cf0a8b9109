"""The agent process (`runyard agent start`): takes work from its inbox on NATS, runs
it with the local-mode runners, and reports back (DESIGN.md §4, §6, §10).

Acks: a `job.assign` is acked once the claim is stored in RY_AGENT, a `step.assign` once
its `step.finished` is, so work is never lost with the connection. Before a step's
process starts, the ledger (agent/journal.py) notes it; a restarted agent reports each
step it finds there `interrupted` — it never runs a step twice in one attempt — and a
journal of finished steps turns a redelivered message into an ack, not a second run.
Running steps never wait on NATS: their lines and results go through the spool.

Fencing: the attempt number on every message is the fencing token. Told that an
attempt is no longer its own (`job.revoked`, in answer to a late event or to a
heartbeat listing it), the agent kills that job's processes at once and reports
nothing more about it. Heartbeats list the attempts it holds, so the dispatcher frees
the slots of attempts a restarted agent no longer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from agent import git, metrics, workspaces
from agent.actions import ActionCache
from agent.config import AgentConfig
from agent.connection import Refused, admitted, connect
from agent.guard import Containment, StepGuard
from agent.journal import Journal, Ledger, OpenJob, StartedStep
from agent.logship import StepLog
from agent.results import collect
from agent.runners import StepResult, StepRunner
from agent.sandbox import Sandbox
from agent.spool import Spool
from runyard.engine.events import ResolvedStep
from schemas import subjects
from schemas.messages import (
    AgentRemoved,
    Heartbeat,
    JobAssign,
    JobClaimed,
    JobFinish,
    JobFinished,
    JobRevoked,
    LogBatch,
    StepAssign,
    StepFinished,
    decode_control,
    decode_inbox,
)
from schemas.pipeline import ActionRef
from schemas.status import Status

__all__ = ["Agent", "Refused", "admitted", "connect"]

log = logging.getLogger("runyard.agent")

HEARTBEAT = 5.0
IN_PROGRESS = 20.0  # well inside the inbox consumer's ack wait
SHUTDOWN = 30.0  # seconds for Ctrl-C: cancel steps (10 s grace), report, flush
FIRST_LOOK = 0.5  # seconds the first fetch after (re)connecting waits on an empty inbox
FETCH_WAIT = 5.0
INTERRUPTED = (
    "the agent stopped while this step ran (it was killed or restarted); its processes "
    "were ended and the step was not run again in this attempt"
)


def job_key(run: str, job: str, attempt: int) -> str:
    return f"{run}|{job}|{attempt}"


def split_key(key: str) -> tuple[str, str, int]:
    run, job, attempt = key.split("|")
    return run, job, int(attempt)


@dataclass
class Job:
    assign: JobAssign
    workspace: Path
    setup_error: str | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    step: asyncio.Task[None] | None = None
    step_index: int | None = None
    step_msg: Msg | None = None
    guard: StepGuard | None = None  # the running step's processes
    revoked: bool = False  # the attempt is no longer this agent's: report nothing


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        nc: Client,
        directory: Path,
        slots: int,
        sandbox: Sandbox | None = None,
        keep_workspaces: float = 0.0,
    ) -> None:
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.dir = directory
        self.work = directory / "work"
        self.slots = slots
        self.keep_workspaces = keep_workspaces
        self.spool = Spool(nc, directory / "spool")
        self.journal = Journal(directory / "state" / "done")
        self.ledger = Ledger(directory / "state" / "started")
        self.contain = Containment(config.id, self.ledger)
        cache = directory / "cache"
        self.runner = StepRunner(ActionCache(cache / "actions"), cache, sandbox)
        self.jobs: dict[str, Job] = {}
        self.removed = asyncio.Event()  # the server said this agent no longer exists
        self.tasks: set[asyncio.Task[None]] = set()
        self.host = metrics.host_context(config.id, config.name)
        self.beat = asyncio.Event()  # send a heartbeat now
        self.inbox_empty: tuple[float, int] | None = None  # (monotonic, connection) seen

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        started = [s for j in self.ledger.jobs.values() for s in j.steps.values()]
        self.contain.start(started)  # what a killed predecessor left running dies first
        self._recover()
        self.spool.start()
        await self.nc.subscribe(subjects.agent_control(self.config.id), cb=self._on_control)
        loops = [
            asyncio.ensure_future(c)
            for c in (self._fetch(), self._heartbeats(), self._keep_in_progress(), self._sweep())
        ]
        log.info(
            "agent %s (%s) started with %d slots", self.config.name, self.config.id, self.slots
        )
        await stop.wait()
        log.info("stopping: cancelling running steps")
        for loop in loops[:1] + loops[2:]:
            loop.cancel()
        try:
            await asyncio.wait_for(self._shutdown(), SHUTDOWN)
        except TimeoutError:
            log.error("could not stop cleanly within %.0f s; leaving now", SHUTDOWN)
        loops[1].cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        self.contain.stop()
        self.ledger.close()

    async def _shutdown(self) -> None:
        """Ctrl-C: cancel running steps, report them, send what is queued (not waiting
        for a server that is not there: it stays in the spool for the next start)."""
        for job in self.jobs.values():
            job.cancel.set()
        running = [j.step for j in self.jobs.values() if j.step is not None]
        await asyncio.gather(*running, return_exceptions=True)
        if self.nc.is_connected and not await self.spool.drained(10):
            log.warning("NATS did not take everything in time; it stays in the spool")
        await self.spool.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("agent task failed", exc_info=exc)

    # --- what an earlier process left -------------------------------------------------

    def _recover(self) -> None:
        """Report the steps a killed predecessor left `interrupted` (their processes
        are gone by now); carry on with the jobs it had claimed (the dispatcher says
        which of them are still this agent's)."""
        for found in list(self.ledger.jobs.values()):
            run, name, attempt = split_key(found.key)
            placeholder = JobAssign(run=run, job=name, attempt=attempt, project="", pipeline="")
            job = Job(placeholder, workspaces.path(self.work, run, name))
            self.jobs[found.key] = job
            if found.result is not None:  # it may not have reached JetStream
                index = StepFinished.model_validate_json(found.result).index
                self._send_event(found.result, f"sf:{found.key}|{index}")
            elif not found.steps:  # claimed, nothing run: the claim may not have got out
                self._claim(job, found.key)
            for step in list(found.steps.values()):
                log.warning("step %s was interrupted by this agent's restart", step.key)
                self._report_interrupted(found, step)

    def _report_interrupted(self, job: OpenJob, step: StartedStep) -> None:
        run, name, attempt = split_key(job.key)
        index = int(step.key.rsplit("|", 1)[1])
        data = self._interrupted(job.key, index, step.step, step.at, INTERRUPTED)
        self.ledger.step_done(job.key, step.key, data)
        self.journal.add(f"step:{step.key}")
        # the step's log is complete as far as it got
        end = LogBatch(
            agent=self.config.id,
            run=run,
            job=name,
            attempt=attempt,
            step=step.step,
            lines=[],
            final=True,
        )
        subject = subjects.agent_logs(self.config.id, run, name, step.step)
        self.spool.put(subject, end.encode(), f"log:{run}:{name}:{attempt}:{step.step}:interrupted")
        self._send_event(data, f"sf:{step.key}")

    def _send_event(self, data: bytes, msg_id: str, on_sent: Any = None) -> None:
        self.spool.put(subjects.agent_events(self.config.id), data, msg_id, on_sent)

    async def _sweep(self) -> None:
        """Workspaces of jobs that are over (or that a killed agent left behind)."""
        while True:
            active = {(j.assign.run, j.assign.job) for j in self.jobs.values()}
            try:
                await asyncio.to_thread(workspaces.sweep, self.work, active, self.keep_workspaces)
            except Exception as exc:  # a full disk must not stop the agent
                log.warning("sweeping workspaces: %s", exc)
            await asyncio.sleep(min(workspaces.SWEEP_EVERY, max(self.keep_workspaces, 60.0)))

    # --- the inbox ------------------------------------------------------------------

    async def _fetch(self) -> None:
        while True:
            try:
                # the server made the consumer when it admitted this agent
                sub = await self.js.pull_subscribe_bind(
                    subjects.agent_inbox_consumer(self.config.id), subjects.INBOX_STREAM.name
                )
                break
            except Exception as exc:
                log.warning("waiting for NATS: %s", exc)
                await asyncio.sleep(1)
        while True:
            connection = self._connection()
            try:
                msgs = await sub.fetch(1, timeout=FETCH_WAIT if self.inbox_empty else FIRST_LOOK)
            except TimeoutError:
                self._inbox_was_empty(connection)
                continue
            except Exception as exc:
                self.inbox_empty = None
                log.debug("fetch: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                self._dispatch(msg)

    def _connection(self) -> int:
        """Which connection this is: the count of reconnects so far (-1: none now)."""
        return int(self.nc.stats["reconnects"]) if self.nc.is_connected else -1

    def _inbox_was_empty(self, connection: int) -> None:
        """A fetch found nothing on one unbroken connection: everything sent to this
        inbox before it started has been received. The first time on a connection, a
        heartbeat says so at once (the dispatcher frees slots it no longer runs)."""
        if connection < 0 or connection != self._connection():
            self.inbox_empty = None
            return
        first = self.inbox_empty is None or self.inbox_empty[1] != connection
        self.inbox_empty = (time.monotonic(), connection)
        if first:
            self.beat.set()

    def _dispatch(self, msg: Msg) -> None:
        try:
            work = decode_inbox(msg.data)
        except ValueError as exc:
            log.error("dropping an unreadable inbox message: %s", exc)
            self._spawn(msg.term())
            return
        if isinstance(work, JobAssign):
            self._spawn(self._job_assigned(work, msg))
        elif isinstance(work, StepAssign):
            self._step_assigned(work, msg)
        else:
            self._spawn(self._job_finish(work, msg))

    # --- jobs -----------------------------------------------------------------------

    async def _job_assigned(self, assign: JobAssign, msg: Msg) -> None:
        key = job_key(assign.run, assign.job, assign.attempt)
        if key in self.jobs or f"job:{key}" in self.journal:
            await msg.ack()
            return
        self.ledger.claim(key)
        workspace = workspaces.path(self.work, assign.run, assign.job)
        job = Job(assign, workspace)
        self.jobs[key] = job
        if workspace.exists():  # an earlier attempt's: start clean
            await asyncio.to_thread(workspaces.remove, workspace)
        workspace.mkdir(parents=True, exist_ok=True)
        if assign.repository:
            try:
                ref, _ = await git.resolve(assign.repository, assign.sha or assign.ref or "HEAD")
                await git.fetch_checkout(assign.repository, ref, workspace)
            except git.GitError as exc:
                job.setup_error = f"checkout of {assign.repository} failed: {exc}"
        self._claim(job, key, msg)

    def _claim(self, job: Job, key: str, msg: Msg | None = None) -> None:
        claimed = JobClaimed(
            agent=self.config.id,
            run=job.assign.run,
            job=job.assign.job,
            attempt=job.assign.attempt,
            workspace=str(job.workspace),
            host=self.host,
            at=time.time(),
        )
        self._send_event(claimed.encode(), "claim:" + key, msg.ack if msg else None)

    async def _job_finish(self, finish: JobFinish, msg: Msg) -> None:
        key = job_key(finish.run, finish.job, finish.attempt)
        job = self.jobs.get(key)
        if job is None or job.revoked:  # over here already, or never this agent's
            self.journal.add(f"job:{key}")
            await msg.ack()
            return
        job.cancel.set()
        if job.step is not None:
            await asyncio.gather(job.step, return_exceptions=True)
        collected = await collect(self.js, self.config.id, job.workspace, finish)
        self._release(job.workspace)
        await asyncio.to_thread(workspaces.finished, job.workspace, self.keep_workspaces)
        self.journal.add(f"job:{key}")
        done = JobFinished(
            agent=self.config.id,
            run=finish.run,
            job=finish.job,
            attempt=finish.attempt,
            status=finish.status,
            artifacts=collected.artifacts,
            tests=collected.tests,
            errors=collected.errors,
            at=time.time(),
        )

        async def sent() -> None:
            # listed in heartbeats until now: its slot is freed by this job.finished
            self.jobs.pop(key, None)
            self.ledger.job_done(key)
            await msg.ack()

        self._send_event(done.encode(), "done:" + key, sent)

    async def _on_control(self, msg: Msg) -> None:
        try:
            control = decode_control(msg.data)
        except ValueError as exc:
            log.error("unreadable control message: %s", exc)
            return
        if isinstance(control, AgentRemoved):
            log.error("this agent was removed on the server; stopping")
            self.removed.set()
            return
        key = job_key(control.run, control.job, control.attempt)
        job = self.jobs.get(key)
        if isinstance(control, JobRevoked):
            await self._revoked(key, job)
        elif job is not None:
            job.cancel.set()

    async def _revoked(self, key: str, job: Job | None) -> None:
        """The attempt is no longer this agent's (it was lost, then came back; or it
        ended without it): kill its processes now, say nothing more about it."""
        self.journal.add(f"job:{key}")
        if job is None or job.revoked:
            return
        log.warning("attempt %s is no longer this agent's; killing its processes", key)
        job.revoked = True
        if job.guard is not None:
            job.guard.kill_now()
        job.cancel.set()
        if job.step is not None:
            await asyncio.gather(job.step, return_exceptions=True)
        if job.step_msg is not None:
            with contextlib.suppress(Exception):
                await job.step_msg.ack()
        self.jobs.pop(key, None)
        self.ledger.job_done(key)
        self._release(job.workspace)
        await asyncio.to_thread(workspaces.remove, job.workspace)

    def _release(self, workspace: Path) -> None:
        if self.runner.sandbox is not None:
            self.runner.sandbox.release(workspace)

    # --- steps ----------------------------------------------------------------------

    def _step_assigned(self, assign: StepAssign, msg: Msg) -> None:
        key = job_key(assign.run, assign.job, assign.attempt)
        step_key = f"step:{key}|{assign.index}"
        if step_key in self.journal or f"job:{key}" in self.journal:
            self._spawn(msg.ack())  # its result is sent or in the spool, or it is over
            return
        job = self.jobs.get(key)
        if job is None:
            # never claimed by this agent as far as its records go: there is no
            # workspace to run it in, so this attempt cannot go on here
            self._spawn(self._unknown_step(assign, msg))
            return
        if job.revoked:
            self._spawn(msg.ack())
            return
        if job.step_index == assign.index and job.step is not None:
            job.step_msg = msg  # a redelivery of the running step: ack the newest one
            return
        job.cancel = asyncio.Event()  # a fresh one per step, as in local mode
        job.step_index, job.step_msg = assign.index, msg
        job.step = self._spawn(self._run_step(job, assign, step_key))

    async def _unknown_step(self, assign: StepAssign, msg: Msg) -> None:
        key = job_key(assign.run, assign.job, assign.attempt)
        log.warning("step %s|%d of a job this agent has no record of", key, assign.index)
        self.journal.add(f"step:{key}|{assign.index}")
        error = "this agent restarted without a record of the job (its workspace is gone)"
        finished = self._interrupted(key, assign.index, assign.step, time.time(), error)
        self._send_event(finished, f"sf:{key}|{assign.index}", msg.ack)

    def _interrupted(self, key: str, index: int, step: str, started: float, error: str) -> bytes:
        """The `step.finished` of a step that will not run (again) in this attempt."""
        run, job, attempt = split_key(key)
        return StepFinished(
            agent=self.config.id,
            run=run,
            job=job,
            attempt=attempt,
            index=index,
            step=step,
            status=Status.INTERRUPTED,
            error=error,
            started_at=started,
            finished_at=max(time.time(), started),
        ).encode()

    async def _run_step(self, job: Job, assign: StepAssign, step_key: str) -> None:
        key = job_key(assign.run, assign.job, assign.attempt)
        sink = StepLog(
            self.spool, self.config.id, assign.run, assign.job, assign.attempt, assign.step
        )
        guard = self.contain.guard(key)
        # noted before anything of the step runs: a restart reports it, never reruns it
        guard.key = self.ledger.start(key, assign.index, assign.step, time.time())
        job.guard = guard
        try:
            if job.setup_error:
                sink("err", job.setup_error)
                now = time.time()
                result = StepResult(
                    Status.FAILURE, error=job.setup_error, started_at=now, finished_at=now
                )
            else:
                result = await self.runner.run(
                    resolved(assign), job.workspace, sink, job.cancel, tracker=guard
                )
        finally:
            job.guard = None
            guard.close()
        sink.flush(final=True)
        self.journal.add(step_key)
        if job.revoked:
            self.ledger.step_done(key, guard.key, None)
            return
        finished = StepFinished(
            agent=self.config.id,
            run=assign.run,
            job=assign.job,
            attempt=assign.attempt,
            index=assign.index,
            step=assign.step,
            **result.report(),
        )
        data = finished.encode()
        self.ledger.step_done(key, guard.key, data)

        async def ack() -> None:
            if job.step_msg is not None:
                await job.step_msg.ack()

        self._send_event(data, "sf:" + step_key[5:], ack)
        job.step_index = None

    async def _keep_in_progress(self) -> None:
        """Long steps: tell JetStream the step message is still being worked on."""
        while True:
            await asyncio.sleep(IN_PROGRESS)
            for job in list(self.jobs.values()):
                if job.step_msg is not None and job.step_index is not None:
                    with contextlib.suppress(Exception):
                        await job.step_msg.in_progress()

    # --- heartbeats -----------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Every HEARTBEAT seconds, and at once when `beat` is set."""
        while True:
            try:
                facts = await asyncio.to_thread(metrics.collect, self.dir)
                if self.nc.is_connected:
                    await self.nc.publish(
                        subjects.agent_heartbeat(self.config.id), self._heartbeat(facts)
                    )
            except Exception as exc:
                log.debug("heartbeat: %s", exc)
            self.beat.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.beat.wait(), HEARTBEAT)

    def _heartbeat(self, facts: Any) -> bytes:
        held = [k for k, j in self.jobs.items() if not j.revoked]
        checked = None
        if self.inbox_empty is not None and self.inbox_empty[1] == self._connection():
            checked = time.monotonic() - self.inbox_empty[0]
        return Heartbeat(
            agent=self.config.id,
            slots=self.slots,
            free_slots=max(self.slots - len(held), 0),
            jobs=held,
            inbox_checked=checked,
            events_seq=self.spool.stored.get(subjects.AGENT_STREAM.name),
            metrics=facts,
            at=time.time(),
        ).encode()


def resolved(assign: StepAssign) -> ResolvedStep:
    """The wire message → what a runner executes."""
    return ResolvedStep(
        index=assign.index,
        id=assign.step,
        name=assign.name,
        script=assign.run_script,
        shell=assign.shell,
        action=ActionRef.model_validate(assign.action) if assign.action else None,
        inputs=assign.inputs,
        env=assign.env,
        working_directory=assign.working_directory,
        timeout=assign.timeout,
        cache=assign.cache,
        mask=assign.mask,
    )
