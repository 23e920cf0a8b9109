"""Compile a validated pipeline into its job instances: matrix expanded, needs resolved."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from runyard.dag import topological_order
from runyard.engine.text import to_text
from schemas.pipeline import Job, Pipeline


@dataclass(frozen=True)
class JobPlan:
    key: str  # unique in the run, safe in NATS subjects: `train` or `train~2`
    job_id: str
    name: str
    matrix: dict[str, Any]
    needs: tuple[str, ...]  # job ids (every instance of each must end first)
    spec: Job


@dataclass(frozen=True)
class Plan:
    pipeline: Pipeline
    jobs: dict[str, JobPlan]  # in topological order
    instances: dict[str, list[str]] = field(default_factory=dict)  # job id → keys


def _matches(combo: dict[str, Any], entry: dict[str, Any]) -> bool:
    return all(combo.get(k) == v for k, v in entry.items() if k in combo)


def expand_matrix(matrix: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes, less `exclude`, plus `include` (GitHub's rules:
    an include entry extends the combinations it agrees with, or is added on its own)."""
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    excludes = [e for e in matrix.get("exclude", []) if isinstance(e, dict)]
    combos = [c for c in combos if not any(_matches(c, e) for e in excludes)] if axes else []
    for entry in (e for e in matrix.get("include", []) if isinstance(e, dict)):
        original = {k: v for k, v in entry.items() if k in axes}
        targets = [c for c in combos if original and _matches(c, original)]
        if targets and all(c.get(k, v) == v for c in targets for k, v in entry.items()):
            for combo in targets:
                combo.update(entry)
        else:
            combos.append(dict(entry))
    return combos


def compile_plan(pipeline: Pipeline) -> Plan:
    order = topological_order({job_id: job.needs for job_id, job in pipeline.jobs.items()})
    jobs: dict[str, JobPlan] = {}
    instances: dict[str, list[str]] = {}
    for job_id in order:
        spec = pipeline.jobs[job_id]
        combos = expand_matrix(spec.strategy.matrix) if spec.strategy else [{}]
        name = spec.name or job_id
        keys = []
        for n, combo in enumerate(combos, start=1):
            key = job_id if len(combos) == 1 and not spec.strategy else f"{job_id}~{n}"
            label = f"{name} ({', '.join(to_text(v) for v in combo.values())})" if combo else name
            jobs[key] = JobPlan(key, job_id, label, combo, tuple(spec.needs), spec)
            keys.append(key)
        instances[job_id] = keys
    return Plan(pipeline, jobs, instances)
