"""Loading a stored run into an engine (no NATS): the run's plan is compiled from the
pipeline source saved with it, so editing a pipeline never changes a run under way."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from runyard.engine.contexts import RunInfo
from runyard.engine.machine import Engine
from runyard.engine.plan import Plan, compile_plan
from runyard.engine.state import RunState
from schemas.pipeline import Pipeline
from services.dispatcher.effects import RunFacts
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
    facts: RunFacts
    engine: Engine
    version: int
    state_json: str
    group: str = ""  # its concurrency group, if it has one


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
    state = RunState.model_validate_json(f["state"])
    facts = facts_for(stored.id, pipeline, f["project"], event)
    engine = Engine(plan, info, state)
    return LiveRun(facts, engine, stored.version, f["state"], f.get("group", ""))
