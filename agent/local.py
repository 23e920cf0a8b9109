"""Local mode (`runyard pipeline run FILE`): the engine and the agent's runners on this
machine, with no server. Jobs run in the current directory, or in a fresh checkout of
the pipeline's `repository` when it names one."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import git
from agent.actions import ActionCache
from agent.metrics import host_context
from agent.runners import StepRunner
from runyard.engine.contexts import RunInfo, form_inputs
from runyard.engine.events import (
    Command,
    Event,
    FinishJob,
    JobEnded,
    JobStarted,
    RunCancelled,
    RunDone,
    RunStep,
    StartJob,
    StepDone,
    StopJob,
)
from runyard.engine.machine import Engine
from runyard.engine.plan import Plan, compile_plan
from runyard.engine.state import RunState
from schemas.messages import TriggerEvent
from schemas.pipeline import Pipeline
from schemas.status import Status

Printer = Callable[[str], None]


def only_job(plan: Plan, job_id: str) -> Plan:
    """The plan with just `job_id`'s instances, its needs dropped (`--job`)."""
    if job_id not in plan.instances:
        raise KeyError(job_id)
    keys = plan.instances[job_id]
    jobs = {k: dataclasses.replace(plan.jobs[k], needs=()) for k in keys}
    return Plan(plan.pipeline, jobs, {job_id: keys})


def local_event(given: dict[str, Any]) -> dict[str, Any]:
    """A manual trigger event (every field present, so `${{ event.sha }}` reads as empty)
    with the `--event` file's fields on top."""
    base = TriggerEvent(id="local", kind="manual", project="local", created_at=time.time())
    return {**base.model_dump(mode="json"), **given}


class LocalRun:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        workdir: Path,
        inputs: dict[str, Any],
        event: dict[str, Any],
        job: str | None = None,
        cache_dir: Path | None = None,
        printer: Printer = print,
        secrets: dict[str, str] | None = None,
    ) -> None:
        plan = compile_plan(pipeline)
        self.plan = only_job(plan, job) if job else plan
        run_id = uuid.uuid4().hex[:12]
        info = RunInfo(
            run={
                "id": run_id,
                "name": pipeline.name,
                "runNumber": 1,
                "config": pipeline.model_dump(by_alias=True),
            },
            pipeline={"id": "local", "name": pipeline.name},
            event=local_event(event),
            inputs=form_inputs(pipeline, inputs),
            secrets=secrets or {},
        )
        self.engine = Engine(self.plan, info)
        self.workdir = workdir
        cache = cache_dir or Path(tempfile.gettempdir()) / "runyard-cache"
        self.runner = StepRunner(ActionCache(cache / "actions"), cache)
        self.print = printer
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancels: dict[str, asyncio.Event] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.workspaces: dict[str, Path] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> RunState:
        return self.engine.state

    async def run(self) -> RunState:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.cancel)
        try:
            pending = self.engine.start(time.time())
            while True:
                if any(isinstance(c, RunDone) for c in pending):
                    break
                for command in pending:
                    self._do(command)
                pending = self.engine.apply(await self.events.get())
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return self.state

    def cancel(self) -> None:
        self.events.put_nowait(RunCancelled(at=time.time()))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _do(self, command: Command) -> None:
        if isinstance(command, StartJob):
            self.cancels[command.job] = asyncio.Event()
            if command.timeout:
                self.timers[command.job] = asyncio.get_running_loop().call_later(
                    command.timeout, self._job_timed_out, command.job, command.attempt
                )
            self._spawn(self._start_job(command))
        elif isinstance(command, RunStep):
            # a fresh event per step: an `if: always()` step after a cancel still runs,
            # and a second cancel stops it
            self.cancels[command.job] = asyncio.Event()
            self._spawn(self._run_step(command))
        elif isinstance(command, StopJob):
            if event := self.cancels.get(command.job):
                event.set()
        elif isinstance(command, FinishJob) and (timer := self.timers.pop(command.job, None)):
            timer.cancel()

    def _job_timed_out(self, job: str, attempt: int) -> None:
        self.cancels[job].set()
        self.events.put_nowait(
            JobEnded(
                job=job,
                attempt=attempt,
                status=Status.TIMED_OUT,
                error="the job timed out",
                at=time.time(),
            )
        )

    async def _start_job(self, command: StartJob) -> None:
        repository = self.plan.pipeline.repository
        workspace = self.workdir
        try:
            if repository:
                workspace = Path(tempfile.mkdtemp(prefix=f"runyard-{command.job}-"))
                ref = self.engine.info.event.get("sha") or repository.ref or "HEAD"
                fetch_ref, _ = await git.resolve(repository.url, ref)
                await git.fetch_checkout(repository.url, fetch_ref, workspace)
        except git.GitError as exc:
            self.events.put_nowait(
                JobEnded(
                    job=command.job,
                    attempt=command.attempt,
                    status=Status.CANCELLED,
                    error=str(exc),
                    at=time.time(),
                )
            )
            self.print(f"[{command.job}] checkout failed: {exc}")
            return
        self.workspaces[command.job] = workspace
        self.events.put_nowait(
            JobStarted(
                job=command.job,
                attempt=command.attempt,
                host=host_context("local", "local"),
                at=time.time(),
            )
        )

    async def _run_step(self, command: RunStep) -> None:
        step = command.step
        prefix = f"[{command.job}/{step.id}]"
        self.print(f"{prefix} ▶ {step.name}")
        result = await self.runner.run(
            step,
            self.workspaces[command.job],
            lambda _stream, line: self.print(f"{prefix} {line}"),
            self.cancels[command.job],
        )
        if result.error:
            self.print(f"{prefix} ✗ {result.error}")
        self.events.put_nowait(
            StepDone(job=command.job, attempt=command.attempt, index=step.index, **result.report())
        )


def summary(state: RunState) -> list[str]:
    """The final table: every job and step with status, duration and outputs."""

    def took(start: float | None, end: float | None) -> str:
        return f"{end - start:.2f}s" if start is not None and end is not None else "-"

    lines = [f"{'job / step':<40} {'status':<11} {'time':>8}  outputs"]
    for job in state.jobs.values():
        outputs = " ".join(f"{k}={v}" for k, v in job.outputs.items())
        lines.append(
            f"{job.name:<40} {job.status:<11} {took(job.started_at, job.finished_at):>8}  {outputs}"
        )
        for step in job.steps:
            outputs = " ".join(f"{k}={v}" for k, v in step.outputs.items())
            if step.error and step.status != Status.SUCCESS:
                outputs = (outputs + f" ({step.error})").strip()
            lines.append(
                f"  {step.name[:38]:<38} {step.status:<11} "
                f"{took(step.started_at, step.finished_at):>8}  {outputs}"
            )
    lines.append(f"run: {state.status}")
    return lines


def run_file(pipeline: Pipeline, **kwargs: Any) -> RunState:
    printer = kwargs.setdefault("printer", lambda line: print(line, flush=True))
    state = asyncio.run(LocalRun(pipeline, **kwargs).run())
    for line in summary(state):
        printer(line)
    return state
