"""The run state machine: events in, commands out, no I/O.

`Engine.start()` and `Engine.apply(event)` mutate `engine.state` and return what must
happen next. The dispatcher turns commands into NATS messages; local mode runs them in
processes. Replaying the same events from the same start gives the same state.

Lifecycle of a job: queued → (needs ended, `if` true) StartJob → JobStarted → RunStep per
step, each answered by StepDone → FinishJob with the job's status → (retry?) queued again
as the next attempt. A job whose `if` is false is skipped; one never started when the run
is cancelled is cancelled.

An attempt is the unit of execution: a step runs at most once in it. A step reported
`interrupted` (its agent stopped while it ran) ends the attempt at once, like a lost
agent; a retry is a new attempt that starts again from the first step, and the ended
attempt is kept in `JobState.attempts` with its steps (their logs are stored per attempt).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from runyard.engine import carry
from runyard.engine import contexts as ctx
from runyard.engine.events import (
    Command,
    Event,
    FinishJob,
    JobEnded,
    JobStarted,
    ResolvedStep,
    RunCancelled,
    RunDone,
    RunStep,
    StartJob,
    StepDone,
    StopJob,
)
from runyard.engine.expressions import ExpressionError, condition, evaluate, render
from runyard.engine.masking import Masker
from runyard.engine.plan import Plan
from runyard.engine.script import prepare
from runyard.engine.state import AttemptState, JobState, RunState, StepState
from runyard.engine.text import to_text
from schemas.pipeline import ActionRef
from schemas.status import Status

MINUTE = 60.0
# the `retry.when` word that covers a status (an interrupted attempt lost its agent)
RETRY_AS = {Status.INTERRUPTED: "agent-lost"}


def step_id(spec_id: str | None, index: int) -> str:
    """Unnamed steps are numbered from 1 (ids people write must start with a letter)."""
    return spec_id or str(index + 1)


def initial_state(
    plan: Plan, run_id: str, carried: Mapping[str, carry.Carried] | None = None
) -> RunState:
    """A new run's state; `carried` jobs (a re-run of failed jobs) start as succeeded
    and `start()` never sends them to an agent."""
    jobs = {}
    for key, job in plan.jobs.items():
        steps = [
            StepState(index=i, id=step_id(s.id, i), name=s.name or _default_name(s.run, s.action))
            for i, s in enumerate(job.spec.steps)
        ]
        jobs[key] = JobState(
            key=key, job_id=job.job_id, name=job.name, matrix=job.matrix, steps=steps
        )
    state = RunState(id=run_id, jobs=jobs)
    carry.apply(plan, state, carried or {})
    return state


def _default_name(run: str | None, action: ActionRef | None) -> str:
    if action is not None:
        return f"{action.name}@{action.tag}" if action.tag else str(action.name)
    first = (run or "").strip().splitlines()
    return f"Run {first[0][:60]}" if first else "Run"


class Engine:
    def __init__(
        self,
        plan: Plan,
        info: ctx.RunInfo,
        state: RunState | None = None,
        carried: Mapping[str, carry.Carried] | None = None,
        send_first: bool = False,
    ) -> None:
        """`send_first`: a job's first step goes with its assignment where it can
        (`StartJob.first`; see `_first_step`)."""
        self.plan = plan
        self.info = info
        self.send_first = send_first
        self.state = state or initial_state(plan, str(info.run.get("id", "run")), carried)
        self._earlier: dict[str, ctx.Earlier] = {}  # per job: see ctx.Earlier

    @functools.cached_property
    def _masker(self) -> Masker:
        """Hides the run's secrets in what the state records (it is stored and shown)."""
        return Masker(self.info.secrets.values())

    def masked(self, value: Any) -> Any:
        """`value` (strings, lists and mappings) with the run's secrets hidden: for what
        is kept with the run beside its state (test failures)."""
        return self._masker.data(value)

    # --- entry points ---------------------------------------------------------------

    def start(self, at: float) -> list[Command]:
        if self.state.status != Status.QUEUED:
            return []
        self.state.status = Status.RUNNING
        self.state.started_at = at
        return self._advance(at)

    def apply(self, event: Event) -> list[Command]:
        if self.state.status.final:
            return []
        if isinstance(event, RunCancelled):
            return self._cancel(event.at)
        job = self.state.jobs.get(event.job)
        if job is None or job.attempt != event.attempt or job.status.final:
            return []
        if isinstance(event, JobStarted):
            return self._job_started(job, event)
        if isinstance(event, StepDone):
            return self._step_done(job, event)
        return self._job_ended(job, event)

    # --- jobs -----------------------------------------------------------------------

    def _advance(self, at: float) -> list[Command]:
        """Start every job that can start; end the run when every job has ended."""
        commands: list[Command] = []
        for key, plan in self.plan.jobs.items():
            job = self.state.jobs[key]
            if job.status != Status.QUEUED or job.ready:
                continue
            if not all(j.status.final for j in ctx.needed_jobs(self.plan, self.state, plan)):
                continue
            if self.state.cancelled:
                self._end_job(job, Status.CANCELLED, at)
                continue
            contexts = ctx.job_contexts(self.plan, self.state, self.info, plan)
            try:
                run_it = condition(plan.spec.if_, contexts)
            except ExpressionError as exc:
                job.error = f"job '{plan.name}': {exc}"
                self._end_job(job, Status.FAILURE, at)
                continue
            if not run_it:
                self._end_job(job, Status.SKIPPED, at)
                continue
            if self._at_parallel_limit(plan.job_id):
                continue
            job.ready = True
            timeout = plan.spec.timeout * MINUTE if plan.spec.timeout else None
            first = self._first_step(job) if self.send_first else None
            commands.append(StartJob(key, job.attempt, list(plan.spec.runs_on), timeout, first))
        if commands or any(not j.status.final for j in self.state.jobs.values()):
            return commands
        return [self._finish_run(at)]

    def _at_parallel_limit(self, job_id: str) -> bool:
        strategy = self.plan.pipeline.jobs[job_id].strategy
        if not strategy or not strategy.max_parallel:
            return False
        active = [
            k
            for k in self.plan.instances[job_id]
            if self.state.jobs[k].ready and not self.state.jobs[k].status.final
        ]
        return len(active) >= strategy.max_parallel

    def _first_step(self, job: JobState) -> ResolvedStep | None:
        """The job's first step resolved now, before an agent claims the job, so the
        agent starts it without waiting for its claim's answer. Only where that cannot
        change it: no `if` or timeout of its own (evaluated, and timed, from the claim),
        and nothing in it or its environment reads where the job runs (the agent,
        machine and python contexts, unknown until the claim, make it raise here)."""
        specs = self.plan.jobs[job.key].spec.steps
        if not specs or specs[0].if_ is not None or specs[0].timeout:
            return None
        step = job.steps[0]
        try:
            contexts = ctx.step_contexts(self.plan, self.state, self.info, job, 0)
            resolved = self._resolve(job, step, contexts)
        except ExpressionError:
            return None
        job.first_sent = True
        step.inputs = self._masker.data(resolved.inputs)
        return resolved

    def _job_started(self, job: JobState, event: JobStarted) -> list[Command]:
        if not event.first:  # placed later, from the queue: the first step goes as any
            job.first_sent = False
        if job.status == Status.RUNNING:
            return []
        job.status = Status.RUNNING
        job.host = event.host
        job.started_at = job.started_at or event.at
        return self._next_step(job, event.at)

    def _job_ended(self, job: JobState, event: JobEnded) -> list[Command]:
        for step in job.steps:
            if step.status == Status.RUNNING:
                step.status = event.status
                step.finished_at = event.at
            elif step.status == Status.QUEUED:
                step.status = Status.SKIPPED
        job.error = event.error or job.error
        return self._job_over(job, event.status, event.at)

    def _job_over(self, job: JobState, status: Status, at: float) -> list[Command]:
        """The attempt ended with `status`: retry it, or end the job for good."""
        commands: list[Command] = [FinishJob(job.key, job.attempt, status)]
        retry = self.plan.jobs[job.key].spec.retry
        if (
            RETRY_AS.get(status, str(status)) in retry.when
            and job.attempt <= retry.max
            and not self.state.cancelled
            and not job.cancel_requested
        ):
            self._reset_for_retry(job, status, at)
        else:
            self._end_job(job, status, at)
            commands += self._fail_fast(job, at)
        return commands + self._advance(at)

    def _reset_for_retry(self, job: JobState, status: Status, at: float) -> None:
        """Keep the ended attempt as it was; the next one starts clean (no error, no
        outputs, every step queued)."""
        started = [s.started_at for s in job.steps if s.started_at is not None]
        agent = job.host.get("agent")
        job.attempts.append(
            AttemptState(
                attempt=job.attempt,
                status=status,
                error=job.error,
                agent=agent if isinstance(agent, dict) else None,
                steps=job.steps,
                started_at=min(started, default=None),
                finished_at=at,
            )
        )
        job.attempt += 1
        job.status = Status.QUEUED
        job.ready = False
        job.first_sent = False
        job.outputs = {}
        job.error = None
        job.steps = [StepState(index=s.index, id=s.id, name=s.name) for s in job.steps]

    def _end_job(self, job: JobState, status: Status, at: float) -> None:
        job.status = status
        job.finished_at = at
        for step in job.steps:
            if step.status == Status.QUEUED:
                step.status = Status.SKIPPED

    def _fail_fast(self, job: JobState, at: float) -> list[Command]:
        plan = self.plan.jobs[job.key]
        strategy = plan.spec.strategy
        if not strategy or not strategy.fail_fast or job.status not in ctx.FAILED:
            return []
        if plan.spec.continue_on_error:
            return []
        commands: list[Command] = []
        for key in self.plan.instances[plan.job_id]:
            other = self.state.jobs[key]
            if other.status.final:
                continue
            commands += self._cancel_job(other, at)
        return commands

    # --- steps ----------------------------------------------------------------------

    def _next_step(self, job: JobState, at: float) -> list[Command]:
        """Resolve the next step that runs, skipping or failing those that cannot."""
        specs = self.plan.jobs[job.key].spec.steps
        for step in job.steps:
            if step.status != Status.QUEUED:
                continue
            if job.first_sent and step.index == 0:  # the agent has it: it went with the job
                step.status = Status.RUNNING
                step.started_at = at
                return []
            spec = specs[step.index]
            earlier = self._earlier.setdefault(job.key, ctx.Earlier())
            contexts = ctx.step_contexts(self.plan, self.state, self.info, job, step.index, earlier)
            try:
                if not condition(spec.if_, contexts):
                    step.status = Status.SKIPPED
                    continue
                resolved = self._resolve(job, step, contexts)
            except ExpressionError as exc:
                step.status = Status.FAILURE
                step.error = f"step '{step.name}': {exc}"
                step.started_at = step.finished_at = at
                continue
            step.status = Status.RUNNING
            step.started_at = at  # when it was sent; the agent's own start replaces it
            step.inputs = self._masker.data(resolved.inputs)
            return [RunStep(job.key, job.attempt, resolved)]
        return self._steps_over(job, at)

    def _resolve(self, job: JobState, step: StepState, contexts: dict[str, Any]) -> ResolvedStep:
        spec = self.plan.jobs[job.key].spec.steps[step.index]
        job_spec = self.plan.jobs[job.key].spec
        env = dict(contexts["env"])
        env.update(self._standard_env(job, step))
        script = None
        if spec.run is not None:
            prepared = prepare(spec.run, spec.shell, lambda source: evaluate(source, contexts))
            script = prepared.script
            env.update(prepared.env)
        inputs = render(dict(spec.inputs), contexts)
        workdir = spec.working_directory or job_spec.working_directory
        return ResolvedStep(
            index=step.index,
            id=step.id,
            name=step.name,
            script=script,
            shell=spec.shell,
            action=spec.action,
            inputs=inputs,
            env=env,
            working_directory=to_text(render(workdir, contexts)) if workdir else None,
            timeout=spec.timeout * MINUTE if spec.timeout else None,
            cache=spec.cache,
            mask=[v for v in self.info.secrets.values() if v],
        )

    def _standard_env(self, job: JobState, step: StepState) -> dict[str, str]:
        return {
            "CI": "true",
            "RUNYARD": "true",
            "RUNYARD_RUN_ID": str(self.info.run.get("id", "")),
            "RUNYARD_PIPELINE": str(self.info.pipeline.get("name", "")),
            "RUNYARD_JOB": job.key,
            "RUNYARD_JOB_ATTEMPT": str(job.attempt),
            "RUNYARD_STEP": step.id,
        }

    def _step_done(self, job: JobState, event: StepDone) -> list[Command]:
        if job.status == Status.QUEUED and job.first_sent and event.index == 0:
            # the result of the step sent with the job came before the job's claim
            started = JobStarted(
                job=job.key, attempt=job.attempt, host=event.host, first=True, at=event.started_at
            )
            self._job_started(job, started)
        step = job.steps[event.index] if event.index < len(job.steps) else None
        if step is None or step.status != Status.RUNNING:
            return []
        step.status = event.status
        step.exit_code = event.exit_code
        step.outputs = event.outputs
        step.error = event.error
        step.started_at = event.started_at
        step.finished_at = event.finished_at
        if event.status == Status.INTERRUPTED:  # never run again in this attempt
            job.error = event.error or job.error
            return self._job_ended_at_step(job, event.finished_at)
        if event.status == Status.CANCELLED:  # stopped on the agent's side (it shut down)
            job.cancel_requested = True
        return self._next_step(job, event.finished_at)

    def _job_ended_at_step(self, job: JobState, at: float) -> list[Command]:
        """The attempt ends with its step: later steps (even `if: always()` ones) are
        skipped, since the workspace they would run in is gone with the agent."""
        for step in job.steps:
            if step.status == Status.QUEUED:
                step.status = Status.SKIPPED
        return self._job_over(job, Status.INTERRUPTED, at)

    def _steps_over(self, job: JobState, at: float) -> list[Command]:
        specs = self.plan.jobs[job.key].spec.steps
        counted = [s for s in job.steps if not specs[s.index].continue_on_error]
        if job.cancel_requested or self.state.cancelled:
            status = Status.CANCELLED
        elif any(s.status == Status.TIMED_OUT for s in counted):
            status = Status.TIMED_OUT
        elif any(s.failed for s in counted):
            status = Status.FAILURE
        else:
            status = Status.SUCCESS
        earlier = self._earlier.pop(job.key, None)  # the job's steps are over
        contexts = ctx.step_contexts(self.plan, self.state, self.info, job, len(job.steps), earlier)
        try:
            outputs = render(dict(self.plan.jobs[job.key].spec.outputs), contexts)
            job.outputs = self._masker.data(outputs)
        except ExpressionError as exc:
            job.error = f"job '{job.name}' outputs: {exc}"
            status = Status.FAILURE if status == Status.SUCCESS else status
        return self._job_over(job, status, at)

    # --- cancel and the end ---------------------------------------------------------

    def _cancel(self, at: float) -> list[Command]:
        self.state.cancelled = True
        commands: list[Command] = []
        for job in self.state.jobs.values():
            if not job.status.final:
                commands += self._cancel_job(job, at)
        return commands + self._advance(at)

    def _cancel_job(self, job: JobState, at: float) -> list[Command]:
        job.cancel_requested = True
        if job.status == Status.RUNNING:  # its running step reports back as cancelled
            return [StopJob(job.key, job.attempt, Status.CANCELLED)]
        stop: list[Command] = [StopJob(job.key, job.attempt, Status.CANCELLED)] if job.ready else []
        self._end_job(job, Status.CANCELLED, at)
        return stop

    def _finish_run(self, at: float) -> RunDone:
        counted = [
            j for j in self.state.jobs.values() if not self.plan.jobs[j.key].spec.continue_on_error
        ]
        if self.state.cancelled:
            status = Status.CANCELLED
        elif any(j.status in (*ctx.FAILED, Status.CANCELLED) for j in counted):
            status = Status.FAILURE
        else:
            status = Status.SUCCESS
        self.state.status = status
        self.state.finished_at = at
        return RunDone(status)
