"""The expression contexts of DESIGN.md §2 for a job or a step, from the run's state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runyard.engine.expressions import render
from runyard.engine.plan import JobPlan, Plan
from runyard.engine.state import JobState, RunState, StepState
from runyard.engine.text import to_text
from schemas.pipeline import Pipeline, Step
from schemas.status import Status


@dataclass(frozen=True)
class RunInfo:
    """What is fixed for the whole run."""

    run: dict[str, Any]  # id, name, runNumber, config
    pipeline: dict[str, Any]  # id, name, projectId, creatorId, lastRunNumber
    event: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)


def form_inputs(pipeline: Pipeline, given: dict[str, Any]) -> dict[str, Any]:
    """Run inputs with the manual form's defaults applied."""
    form = (pipeline.triggers.manual.form if pipeline.triggers.manual else None) or {}
    props = form.get("properties", {}) if isinstance(form, dict) else {}
    values = {k: p["default"] for k, p in props.items() if isinstance(p, dict) and "default" in p}
    return {**values, **given}


FAILED = (Status.FAILURE, Status.TIMED_OUT, Status.AGENT_LOST, Status.INTERRUPTED)


def _status_functions(ok: bool, failed: bool, cancelled: bool) -> dict[str, Callable[[], bool]]:
    return {
        "success": lambda: ok and not cancelled,
        "failure": lambda: failed,
        "always": lambda: True,
        "cancelled": lambda: cancelled,
    }


def _base(info: RunInfo) -> dict[str, Any]:
    return {
        "run": info.run,
        "pipeline": info.pipeline,
        "event": info.event,
        "input": info.inputs,
        "inputs": info.inputs,
        "secrets": info.secrets,
    }


def _needs(plan: Plan, state: RunState, job: JobPlan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for need in job.needs:
        jobs = [state.jobs[k] for k in plan.instances.get(need, [])]
        outputs: dict[str, Any] = {}
        for instance in jobs:
            outputs.update(instance.outputs)
        worst = next((j.status for j in jobs if j.status != Status.SUCCESS), Status.SUCCESS)
        out[need] = {"outputs": outputs, "result": str(worst)}
    return out


def needed_jobs(plan: Plan, state: RunState, job: JobPlan) -> list[JobState]:
    """Every instance of every job that `job` needs."""
    return [state.jobs[k] for n in job.needs for k in plan.instances.get(n, [])]


def need_passed(plan: Plan, job: JobState) -> bool:
    """A needed job counts as passed when it succeeded, or failed with continue-on-error."""
    spec = plan.jobs[job.key].spec
    return job.status == Status.SUCCESS or (job.status in FAILED and spec.continue_on_error)


def _env(layers: list[dict[str, Any]], contexts: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.items():
            env[key] = to_text(render(value, {**contexts, "env": env}))
    return env


def job_contexts(plan: Plan, state: RunState, info: RunInfo, job: JobPlan) -> dict[str, Any]:
    """For a job's `if:`: run-wide contexts, `needs`, `matrix`, `env`."""
    needed = needed_jobs(plan, state, job)
    ok = all(need_passed(plan, j) for j in needed)
    failed = any(j.status in FAILED for j in needed)
    contexts = {**_base(info), "needs": _needs(plan, state, job), "matrix": job.matrix}
    contexts.update(_status_functions(ok, failed, state.cancelled))
    contexts["env"] = _env([plan.pipeline.env, job.spec.env], contexts)
    contexts["job"] = {"id": job.job_id, "key": job.key, "name": job.name}
    return contexts


@dataclass
class Earlier:
    """What the steps before a step give its contexts, gathered as the job goes on: the
    steps before the next one are over and never change, so step n need not walk the n
    before it again (that made a job's per-step cost grow with its length)."""

    steps_of: list[StepState] | None = None  # the attempt's steps (a retry has new ones)
    count: int = 0
    failed: bool = False
    variable: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)

    def upto(self, job: JobState, specs: list[Step], index: int) -> Earlier:
        if self.steps_of is not job.steps or index < self.count:
            self.steps_of, self.count, self.failed = job.steps, 0, False
            self.variable, self.steps = {}, {}
        for step in job.steps[self.count : index]:
            self.failed = self.failed or (step.failed and not specs[step.index].continue_on_error)
            self.variable.update(step.inputs)
            self.variable.update(step.outputs)
            self.steps[step.id] = {
                "outputs": step.outputs,
                "outcome": str(step.status),
                "conclusion": str(step.status),
            }
        self.count = index
        return self


def step_contexts(
    plan: Plan,
    state: RunState,
    info: RunInfo,
    job: JobState,
    index: int,
    earlier: Earlier | None = None,
) -> dict[str, Any]:
    """For step `index` of `job` (or the job's outputs, with index = number of steps);
    `earlier`: what the job's steps gave so far, kept by the caller from step to step."""
    job_plan = plan.jobs[job.key]
    specs = job_plan.spec.steps
    before = (earlier or Earlier()).upto(job, specs, index)
    failed = before.failed
    cancelled = state.cancelled or job.cancel_requested
    variable = dict(before.variable)  # copies: the next step's contexts go on growing
    steps = dict(before.steps)
    contexts = {
        **_base(info),
        **job.host,
        "needs": _needs(plan, state, job_plan),
        "matrix": job.matrix,
        "steps": steps,
        "variable": variable,
        "job": {
            "id": job.job_id,
            "key": job.key,
            "name": job.name,
            "attempt": job.attempt,
            "status": "failure" if failed else "success",
        },
        **_status_functions(not failed, failed, cancelled),
    }
    step_env = specs[index].env if index < len(specs) else {}
    contexts["env"] = _env([plan.pipeline.env, job_plan.spec.env, step_env], contexts)
    if index < len(specs):
        spec = specs[index]
        contexts["step"] = {"id": job.steps[index].id, "name": job.steps[index].name}
        if spec.action:
            contexts["action"] = spec.action.model_dump()
    return contexts
