"""One agent's jobs, from claim to finish (DESIGN.md §6, §10): claim (the job's
workspace, spawner and code are made meanwhile; its steps wait for them) → its steps,
one at a time → collect and report its end.

Every handler reports in `finally`: whatever breaks in the agent while it prepares a
job or runs a step, the job is still claimed (its steps then fail saying why) and the
step still gets its `step.finished`, so no run waits forever on this agent. Only a
cancelled handler (the agent is stopping) reports nothing: the ledger has the step,
and the next start reports it `interrupted`.

Acks: a `job.assign` is acked once the claim is stored in RY_AGENT, a `step.assign`
once its `step.finished` is. Before a step's process starts, the ledger
(agent/journal.py) notes it; a journal of finished steps turns a redelivered message
into an ack, not a second run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic.main import IncEx

from agent import git, workspaces
from agent.attempt import Job, job_key, split_key
from agent.guard import Containment, StepGuard
from agent.journal import Journal, Ledger, OpenJob, StartedStep
from agent.launcher import Launcher
from agent.logship import StepLog
from agent.results import collect
from agent.runners import StepResult, StepRunner
from agent.spool import OnSent, Spool
from schemas import subjects
from schemas.messages import (
    JobAssign,
    JobClaimed,
    JobFinish,
    JobFinished,
    LogBatch,
    StepAssign,
    StepFinished,
)
from schemas.status import Status

log = logging.getLogger("runyard.agent")

INTERRUPTED = (
    "the agent stopped while this step ran (it was killed or restarted); its processes "
    "were ended and the step was not run again in this attempt"
)
NOT_STARTED = (
    "the agent restarted after it took this job and before this step, which came with "
    "the job, started; it was not run in this attempt"
)
# what the ledger keeps of a `job.assign` (never the first step's secrets)
SECRET_FIELDS: IncEx = {"script", "inputs", "env", "working_directory", "mask"}
LEDGER_ASSIGN: IncEx = {"env": True, "first": SECRET_FIELDS}
Spawner = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]


@dataclass
class Jobs:
    agent: str
    js: JetStreamContext
    work: Path
    spool: Spool
    journal: Journal
    ledger: Ledger
    contain: Containment
    runner: StepRunner
    launcher: Launcher
    host: dict[str, Any]
    spawn: Spawner  # runs a handler as a task of the agent's
    keep_workspaces: float = 0.0
    jobs: dict[str, Job] = field(default_factory=dict)

    def send_event(self, data: bytes, msg_id: str, on_sent: OnSent | None = None) -> None:
        self.spool.put(subjects.agent_events(self.agent), data, msg_id, on_sent)

    # --- what an earlier process left -------------------------------------------------

    def recover(self) -> None:
        """Report the steps a killed predecessor left `interrupted` (their processes
        are gone by now); carry on with the jobs it had claimed (the dispatcher says
        which of them are still this agent's)."""
        for found in list(self.ledger.jobs.values()):
            run, name, attempt = split_key(found.key)
            if found.assign is not None:
                assign = JobAssign.model_validate_json(found.assign)
            else:  # claimed by an agent from before the ledger kept assignments
                assign = JobAssign(run=run, job=name, attempt=attempt, project="", pipeline="")
            job = Job(assign, workspaces.path(self.work, run, name, attempt))
            self.jobs[found.key] = job
            if found.result is not None:  # it may not have reached JetStream
                index = StepFinished.model_validate_json(found.result).index
                self.send_event(found.result, f"sf:{found.key}|{index}")
            elif not found.steps and (first := job.assign.first) is not None:
                # its first step came with it and had not started: it never will (the
                # ledger does not keep what it held), the attempt ends as interrupted
                never = StartedStep(f"{found.key}|{first.index}", found.key, first.id, time.time())
                self._report_interrupted(found, never, NOT_STARTED)
            elif not found.steps:  # claimed, nothing run: the claim may not have got out
                self._claim(job, found.key)
                if found.assign is not None and not found.prepared:  # nor the code in
                    job.prepared = self.spawn(self._prepared(job, found.key))
            for step in list(found.steps.values()):
                log.warning("step %s was interrupted by this agent's restart", step.key)
                self._report_interrupted(found, step)

    def _report_interrupted(
        self, job: OpenJob, step: StartedStep, error: str = INTERRUPTED
    ) -> None:
        run, name, attempt = split_key(job.key)
        index = int(step.key.rsplit("|", 1)[1])
        data = self._interrupted(job.key, index, step.step, step.at, error)
        self.ledger.step_done(job.key, step.key, data)
        self.journal.add(f"step:{step.key}")
        # the step's log is complete as far as it got
        end = LogBatch(
            agent=self.agent,
            run=run,
            job=name,
            attempt=attempt,
            step=step.step,
            lines=[],
            final=True,
        )
        subject = subjects.agent_logs(self.agent, run, name, step.step)
        self.spool.put(subject, end.encode(), f"log:{run}:{name}:{attempt}:{step.step}:interrupted")
        self.send_event(data, f"sf:{step.key}")

    # --- jobs -----------------------------------------------------------------------

    async def assigned(self, assign: JobAssign, msg: Msg) -> None:
        key = job_key(assign.run, assign.job, assign.attempt)
        if key in self.jobs or f"job:{key}" in self.journal:
            await msg.ack()  # its claim is sent or in the spool, or it is over
            return
        self.ledger.claim(key, assign.model_dump_json(exclude=LEDGER_ASSIGN).encode())
        job = Job(assign, workspaces.path(self.work, assign.run, assign.job, assign.attempt))
        self.jobs[key] = job
        # its workspace and sandbox are made (in this order: the first step waits for
        # them), and the claim goes out, while the claim's round trip to the dispatcher
        # (which answers with the first step, unless it came with the job) overlaps them
        if not job.workspace.exists():  # the usual case: no turn of the loop before it
            self._sandbox(job)
        job.prepared = self.spawn(self._prepared(job, key))
        self._claim(job, key, msg)
        if assign.first is not None:  # as if its step.assign had come (none will)
            step = assign.first
            first = StepAssign(run=assign.run, job=assign.job, attempt=assign.attempt, step=step)
            job.step_index = step.index
            job.step = self.spawn(self._run_step(job, first, f"step:{key}|{step.index}"))

    async def _prepared(self, job: Job, key: str) -> None:
        try:
            await self._prepare(job)
        except asyncio.CancelledError:  # the job ended first, or the agent stops
            job.setup_error = "the job ended while its workspace was being prepared"
            raise
        except Exception as exc:  # the agent's own failure: the job's steps say it
            log.exception("preparing job %s failed", key)
            job.setup_error = f"the agent could not prepare this job: {exc}"
        else:
            if not job.setup_error:
                self.ledger.prepared(key)

    async def _prepare(self, job: Job) -> None:
        """A clean workspace, its spawner (building the sandbox meanwhile), the code."""
        assign, workspace = job.assign, job.workspace
        if job.spawner is None:
            if workspace.exists():  # an earlier attempt's: start clean
                await asyncio.to_thread(workspaces.remove, workspace)
            self._sandbox(job)
        if assign.repository:
            try:
                ref, _ = await git.resolve(assign.repository, assign.sha or assign.ref or "HEAD")
                await git.fetch_checkout(assign.repository, ref, workspace)
            except git.GitError as exc:
                job.setup_error = f"checkout of {assign.repository} failed: {exc}"

    def _sandbox(self, job: Job) -> None:
        """Its empty workspace made, its spawner asked for (the sandbox builds meanwhile)."""
        job.workspace.mkdir(parents=True, exist_ok=True)
        job.spawner = self.launcher.job(job.workspace)

    def _claim(self, job: Job, key: str, msg: Msg | None = None) -> None:
        claimed = JobClaimed(
            agent=self.agent,
            run=job.assign.run,
            job=job.assign.job,
            attempt=job.assign.attempt,
            workspace=str(job.workspace),
            host=self.host,
            first=job.assign.first is not None,
            at=time.time(),
        )
        self.send_event(claimed.encode(), "claim:" + key, msg.ack if msg else None)

    async def finish(self, finish: JobFinish, msg: Msg) -> None:
        key = job_key(finish.run, finish.job, finish.attempt)
        job = self.jobs.get(key)
        if job is None or job.revoked:  # over here already, or never this agent's
            self.journal.add(f"job:{key}")
            await msg.ack()
            return
        job.cancel.set()
        await job.give_up_preparing()  # no spawner or workspace is made after this
        if job.step is not None:
            await asyncio.gather(job.step, return_exceptions=True)
        collected = await collect(self.js, self.agent, job.workspace, finish)
        self._release(job)
        await asyncio.to_thread(workspaces.finished, job.workspace, self.keep_workspaces)
        self.journal.add(f"job:{key}")
        done = JobFinished(
            agent=self.agent,
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

        self.send_event(done.encode(), "done:" + key, sent)

    async def revoked(self, key: str) -> None:
        """The attempt is no longer this agent's (it was lost, then came back; or it
        ended without it): kill its processes now, say nothing more about it."""
        self.journal.add(f"job:{key}")
        job = self.jobs.get(key)
        if job is None or job.revoked:
            return
        log.warning("attempt %s is no longer this agent's; killing its processes", key)
        job.revoked = True
        if job.guard is not None:
            job.guard.kill_now()
        job.cancel.set()
        await job.give_up_preparing()
        if job.step is not None:
            await asyncio.gather(job.step, return_exceptions=True)
        if job.step_msg is not None:
            with contextlib.suppress(Exception):
                await job.step_msg.ack()
        self.jobs.pop(key, None)
        self.ledger.job_done(key)
        self._release(job)
        await asyncio.to_thread(workspaces.remove, job.workspace)

    def _release(self, job: Job) -> None:
        if job.spawner is not None:  # its sandbox is not needed any more
            job.spawner.close()
            job.spawner = None

    def close(self) -> None:
        for job in self.jobs.values():
            self._release(job)

    # --- steps ----------------------------------------------------------------------

    def step_assigned(self, assign: StepAssign, msg: Msg) -> None:
        key = job_key(assign.run, assign.job, assign.attempt)
        step_key = f"step:{key}|{assign.step.index}"
        if step_key in self.journal or f"job:{key}" in self.journal:
            self.spawn(msg.ack())  # its result is sent or in the spool, or it is over
            return
        job = self.jobs.get(key)
        if job is None:
            # never claimed by this agent as far as its records go: there is no
            # workspace to run it in, so this attempt cannot go on here
            self.spawn(self._unknown_step(assign, msg))
            return
        if job.revoked:
            self.spawn(msg.ack())
            return
        if job.step_index == assign.step.index and job.step is not None:
            job.step_msg = msg  # a redelivery of the running step: ack the newest one
            return
        job.cancel = asyncio.Event()  # a fresh one per step, as in local mode
        job.step_index, job.step_msg = assign.step.index, msg
        job.step = self.spawn(self._run_step(job, assign, step_key))

    async def _unknown_step(self, assign: StepAssign, msg: Msg) -> None:
        key, step = job_key(assign.run, assign.job, assign.attempt), assign.step
        log.warning("step %s|%d of a job this agent has no record of", key, step.index)
        self.journal.add(f"step:{key}|{step.index}")
        error = "this agent restarted without a record of the job (its workspace is gone)"
        finished = self._interrupted(key, step.index, step.id, time.time(), error)
        self.send_event(finished, f"sf:{key}|{step.index}", msg.ack)

    def _interrupted(self, key: str, index: int, step: str, started: float, error: str) -> bytes:
        """The `step.finished` of a step that will not run (again) in this attempt."""
        run, job, attempt = split_key(key)
        return StepFinished(
            agent=self.agent,
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
        key, step = job_key(assign.run, assign.job, assign.attempt), assign.step
        sink = StepLog(self.spool, self.agent, assign.run, assign.job, assign.attempt, step.id)
        guard = self.contain.guard(key)
        await job.ready()  # (a step waiting for the checkout has not started)
        started = time.time()
        # noted before anything of the step runs: a restart reports it, never reruns it
        guard.key = self.ledger.start(key, step.index, step.id, started)
        job.guard = guard
        result: StepResult | None = None
        try:
            result = await self._execute(job, assign, sink, guard)
        except Exception as exc:  # the agent broke, not the step: still say so
            log.exception("running step %s failed", guard.key)
            error = f"the agent failed running this step: {exc}"
            sink("err", error)
            result = StepResult(
                Status.FAILURE, error=error, started_at=started, finished_at=time.time()
            )
        finally:
            job.guard = None
            guard.close()
            if result is not None:  # None: cancelled, the agent stops (see the module)
                self._step_done(job, assign, step_key, guard.key, sink, result)

    async def _execute(
        self, job: Job, assign: StepAssign, sink: StepLog, guard: StepGuard
    ) -> StepResult:
        now = time.time()
        if job.setup_error:
            sink("err", job.setup_error)
            error = job.setup_error
            return StepResult(Status.FAILURE, error=error, started_at=now, finished_at=now)
        if job.cancel.is_set():  # the job ended while the step waited for its workspace
            return StepResult(Status.CANCELLED, error="cancelled", started_at=now, finished_at=now)
        if job.spawner is None:  # a job carried on from before a restart
            job.spawner = self.launcher.job(job.workspace)
        return await self.runner.run(
            assign.step,
            job.workspace,
            sink,
            job.cancel,
            tracker=guard,
            spawn=job.spawner.spawn,
        )

    def _step_done(
        self,
        job: Job,
        assign: StepAssign,
        step_key: str,
        ledger_key: str,
        sink: StepLog,
        result: StepResult,
    ) -> None:
        key = job_key(assign.run, assign.job, assign.attempt)
        self.journal.add(step_key)
        if job.revoked:
            sink.flush(final=True)
            self.ledger.step_done(key, ledger_key, None)
            return
        first = job.assign.first
        finished = StepFinished(
            agent=self.agent,
            run=assign.run,
            job=assign.job,
            attempt=assign.attempt,
            index=assign.step.index,
            step=assign.step.id,
            # its result may come before the claim: it carries what the claim does
            host=self.host if first is not None and first.index == assign.step.index else {},
            **result.report(),
        )
        data = finished.encode()
        self.ledger.step_done(key, ledger_key, data)

        async def ack() -> None:
            if job.step_msg is not None:
                await job.step_msg.ack()

        self.send_event(data, "sf:" + step_key[5:], ack)
        # the log's end after the result: the next step waits for one store, not two
        sink.flush(final=True)
        job.step_index = None
