"""Loading a stored run into an engine (no NATS): the run's plan is compiled from the
pipeline source saved with it, so editing a pipeline never changes a run under way."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from runyard.engine.contexts import RunInfo
from runyard.engine.events import Command, FinishJob, RunDone
from runyard.engine.machine import Engine
from runyard.engine.plan import Plan, compile_plan
from runyard.engine.state import RunState
from schemas.pipeline import Pipeline
from services.dispatcher.effects import RunFacts
from services.store import runs as store
from services.store.records import validate_source
from services.store.runs import StoredRun


class BadPipeline(ValueError):
    pass


@functools.lru_cache(maxsize=256)
def plan_for(source: str, fmt: str) -> tuple[Pipeline, Plan]:
    result = validate_source(source, fmt)
    if result.pipeline is None or not result.ok:
        raise BadPipeline("; ".join(str(p) for p in result.problems))
    return result.pipeline, compile_plan(result.pipeline)


def run_info(
    run_id: str,
    number: int,
    pipeline: Pipeline,
    fields: dict[str, Any],
    secrets: dict[str, str] | None = None,
) -> RunInfo:
    event: dict[str, Any] = fields["event"]
    return RunInfo(
        run={
            "id": run_id,
            "name": pipeline.name,
            "runNumber": number,
            "config": pipeline.model_dump(by_alias=True),
        },
        pipeline={
            "id": f"{fields['project']}/{pipeline.name}",
            "name": pipeline.name,
            "projectId": fields["project"],
            "version": fields["version"],
        },
        event=event,
        inputs=fields["inputs"],
        secrets=secrets or {},
    )


_SECRETS_WORD = re.compile(r"\bsecrets\b")
_NAMED = re.compile(r"""\s*(?:\.\s*([A-Za-z_][\w-]*)|\[\s*(['"])(.*?)\2\s*\])""")
_YAML_KEY = re.compile(r"\s*:")


def named_secrets(source: str, secrets: dict[str, str]) -> dict[str, str]:
    """The secrets a pipeline's text names (`secrets.NAME`, `secrets['NAME']`): all a
    run of it may receive, so an agent never holds another pipeline's secrets. Any other
    use of `secrets` (e.g. `toJSON(secrets)`) needs them all."""
    names: set[str] = set()
    for found in _SECRETS_WORD.finditer(source):
        if named := _NAMED.match(source, found.end()):
            names.add(named.group(1) or named.group(3))
        elif not _YAML_KEY.match(source, found.end()):  # not a key such as `secrets: true`
            return secrets
    return {k: v for k, v in secrets.items() if k in names}


def run_secrets(
    pipeline: Pipeline, event: dict[str, Any], secrets: dict[str, str]
) -> dict[str, str]:
    """A fork's code reads every secret as an empty string (so nothing is masked either)
    unless the trigger that brought it opts in with `secrets: true`: it could read them
    and send them anywhere."""
    if not event.get("fork"):
        return secrets
    triggers = pipeline.triggers
    trigger = {"pull_request": triggers.pull_request, "pipeline": triggers.pipeline}.get(
        event.get("kind", "")
    )
    return secrets if trigger is not None and trigger.secrets else dict.fromkeys(secrets, "")


def facts_for(run_id: str, pipeline: Pipeline, project: str, event: dict[str, Any]) -> RunFacts:
    repo = pipeline.repository
    return RunFacts(
        id=run_id,
        project=project,
        pipeline=pipeline.name,
        repository=repo.url if repo else event.get("repository"),
        sha=event.get("sha"),
        ref=(event.get("ref") or (repo.ref if repo else None)),
        fork=bool(event.get("fork")),
    )


@dataclass
class LiveRun:
    """A run kept loaded, with what its hash holds of its state as of `version`: the
    `run` field and each job's `job:<key>` (a job missing from `jobs_json` is written
    by the next commit; a run loaded from a whole `state` field has none, so its next
    commit writes it all, split). `open_jobs`: the jobs not ended as of `version`,
    the only ones a change can touch besides those its commands name."""

    facts: RunFacts
    engine: Engine
    version: int
    run_json: str | None = None
    jobs_json: dict[str, str] = field(default_factory=dict)
    open_jobs: set[str] = field(default_factory=set)
    group: str = ""  # its concurrency group, if it has one

    @functools.cached_property
    def _job_keys(self) -> str:
        return orjson.dumps(list(self.engine.state.jobs)).decode()

    def changed_fields(self, commands: list[Command], job: str | None = None) -> dict[str, str]:
        """The state fields whose stored value this change made out of date: the `run`
        field if it changed, and the jobs it touched that changed.

        A job changes only with a command naming it, or by an agent's event about it
        (`job`: a claim or a result may need no command, when the job's first step
        went with its assignment), except a waiting job (not yet sent to an agent)
        that the engine ends as it looks for jobs to start — after a job's attempt
        ended (FinishJob), when the run starts and when it is cancelled (both change
        the run's own fields). Ended jobs never change."""
        state = self.engine.state
        head = state.model_dump_json(exclude={"jobs"})
        run = f'{head[:-1]},"jobs":{self._job_keys}}}'
        fields = {store.RUN_STATE: run} if run != self.run_json else {}
        touched = {c.job for c in commands if not isinstance(c, RunDone)}
        if job in state.jobs:
            touched.add(job)
        if fields or any(isinstance(c, FinishJob) for c in commands):
            touched.update(k for k in self.open_jobs if not state.jobs[k].ready)
        if len(self.jobs_json) < len(state.jobs):  # never written split
            touched.update(state.jobs.keys() - self.jobs_json.keys())
        for key in touched:
            job = state.jobs[key].model_dump_json()
            if job != self.jobs_json.get(key):
                fields[store.JOB + key] = job
        return fields

    def committed(self, fields: dict[str, str]) -> None:
        """`fields` are stored (and the version moved on)."""
        self.version += 1
        self.run_json = fields.get(store.RUN_STATE, self.run_json)
        jobs = self.engine.state.jobs
        for name, value in fields.items():
            if name.startswith(store.JOB):
                key = name.removeprefix(store.JOB)
                self.jobs_json[key] = value
                if jobs[key].status.final:
                    self.open_jobs.discard(key)


def live_run(stored: StoredRun, secrets: dict[str, str]) -> LiveRun:
    f = stored.fields
    pipeline, plan = plan_for(f["source"], f["format"])
    event = stored.json("event")
    info = run_info(
        stored.id,
        stored.number,
        pipeline,
        {
            "event": event,
            "inputs": stored.json("inputs"),
            "project": f["project"],
            "version": int(f["version"]),
        },
        run_secrets(pipeline, event, named_secrets(f["source"], secrets)),
    )
    state = RunState.model_validate_json(f[store.LEGACY_STATE])
    facts = facts_for(stored.id, pipeline, f["project"], event)
    engine = Engine(plan, info, state, send_first=True)
    live = LiveRun(facts, engine, stored.version, group=f.get("group", ""))
    live.open_jobs = {key for key, job in state.jobs.items() if not job.status.final}
    if stored.split:
        live.run_json = f[store.RUN_STATE]
        live.jobs_json = {key: f[store.JOB + key] for key in state.jobs}
    return live
