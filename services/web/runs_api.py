"""The runs API: start a pipeline's run, list runs (filtered and paged), read one run
with its jobs, cancel it or run it again."""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from runyard import forms
from runyard.engine import carry
from runyard.engine.contexts import form_inputs
from runyard.engine.state import RunState
from schemas import subjects
from schemas.messages import RunCancel, TriggerEvent
from services.store import records, run_lists
from services.store import runs as store
from services.store.connection import Redis
from services.web import checks, lookup
from services.web.errors import ApiError, field, json_body, query_float, query_int

ACTIVE = ("queued", "running")
PAGE_MAX = 500


async def _publish_trigger(request: Request, event: TriggerEvent) -> None:
    js = lookup.nats_of(request).jetstream()
    await js.publish(
        subjects.events(event.kind, event.project),
        event.encode(),
        headers={"Nats-Msg-Id": event.id},
    )


async def start_run(request: Request) -> JSONResponse:
    pipeline = await lookup.pipeline(request)
    body = await json_body(request)
    inputs = field(body, "inputs", dict, {})
    spec = records.validate_source(pipeline.source, pipeline.format).pipeline
    manual = spec.triggers.manual if spec else None  # its role: checked by the route's rule
    if spec is not None:
        inputs = form_inputs(spec, inputs)
        if bad := forms.problems(manual.form if manual else None, inputs):
            raise ApiError(422, f"{len(bad)} run input(s) do not fit the form", problems=bad)
    ref = field(body, "ref", str, None) if body.get("ref") is not None else None
    if ref is not None:  # other code than the pipeline's, run with its secrets
        try:
            await checks.require_project(request, pipeline.project, "maintainer")
        except checks.Refused as exc:
            raise ApiError(exc.status, f"choosing the ref: {exc.message}") from None
    event = TriggerEvent(
        id=uuid.uuid4().hex,
        kind="manual",
        project=pipeline.project,
        pipeline=pipeline.name,
        ref=ref,
        inputs=inputs,
        actor=request.state.actor,
        created_at=time.time(),
    )
    await _publish_trigger(request, event)
    run_id = store.run_id_for(event.id, pipeline.project, pipeline.name)
    await run_lists.mark_asked(lookup.redis_of(request), run_id)
    return JSONResponse({"run": run_id, "event": event.id}, status_code=202)


async def list_runs(request: Request) -> JSONResponse:
    pipeline = await lookup.pipeline(request)
    limit = min(query_int(request, "limit", 50, low=1), 500)
    before = query_int(request, "before", 0, low=0) or None
    r = lookup.redis_of(request)
    return JSONResponse(await store.list_runs(r, pipeline.project, pipeline.name, limit, before))


async def _pipeline_names(r: Redis, project: str) -> list[str]:
    return [p.name for p in await records.list_pipelines(r, project)]


async def project_runs(request: Request) -> JSONResponse:
    """`{"runs": [...], "next": <before of the next page or null>}`: the project's runs
    (or one `pipeline`'s), newest first, filtered by `status`, `branch`, `trigger` and
    `actor`, `limit` at a time from `before` (a creation time)."""
    project = await lookup.project(request)
    q = request.query_params
    r = lookup.redis_of(request)
    names = [q["pipeline"]] if q.get("pipeline") else await _pipeline_names(r, project)
    filters = run_lists.Filters(*(q.get(k, "") for k in ("status", "branch", "trigger", "actor")))
    before = query_float(request, "before")
    limit = min(query_int(request, "limit", 50, low=1), PAGE_MAX)
    found, nxt = await run_lists.page(r, project, names, filters, limit, before)
    return JSONResponse({"runs": found, "next": nxt})


def run_view(stored: store.StoredRun) -> dict[str, Any]:
    state = RunState.model_validate_json(stored.fields["state"])
    spec = records.validate_source(stored.fields["source"], stored.fields["format"]).pipeline
    jobs = []
    stale = stored.stale()
    for job in state.jobs.values():
        data = job.model_dump(mode="json", exclude={"host", "ready"})
        data["needs"] = (
            list(spec.jobs[job.job_id].needs) if spec and job.job_id in spec.jobs else []
        )
        data["agent"] = job.host.get("agent")
        finished = stored.json(f"finished:{job.key}") or {}
        data["artifacts"] = finished.get("artifacts", [])
        data["tests"] = finished.get("tests")
        data["problems"] = finished.get("errors", [])
        # what agents said about attempts no longer theirs (dropped; see fencing)
        data["stale"] = [r for r in stale if r.get("job") == job.key]
        jobs.append(data)
    return {
        **stored.summary(),
        "inputs": stored.json("inputs"),
        "event": stored.json("event"),
        "cancelled": state.cancelled,
        "jobs": jobs,
    }


async def get_run(request: Request) -> JSONResponse:
    return JSONResponse(run_view(await lookup.stored_run(request)))


async def cancel_run(request: Request) -> JSONResponse:
    stored = await lookup.stored_run(request)
    project = stored.fields["project"]
    if stored.fields.get("status") not in ACTIVE:
        raise ApiError(409, f"run {stored.id} is {stored.fields.get('status')} already")
    cancel = RunCancel(run=stored.id, by=request.state.actor, at=time.time())
    js = lookup.nats_of(request).jetstream()
    await js.publish(
        subjects.run_control(project),
        cancel.encode(),
        headers={"Nats-Msg-Id": f"cancel:{stored.id}"},
    )
    return JSONResponse({"run": stored.id, "cancel": "requested"}, status_code=202)


async def rerun(request: Request) -> JSONResponse:
    """The same event and inputs as a new run; with `{"failed": true}` the jobs that
    succeeded are carried over and only the others run (409 while the run is active or
    when every job succeeded)."""
    stored = await lookup.stored_run(request)
    failed = await _failed_flag(request)
    if failed:
        _check_failed_rerun(stored)
    before = TriggerEvent.model_validate(stored.json("event"))
    event = before.model_copy(
        update={
            "id": uuid.uuid4().hex,
            "pipeline": stored.fields["pipeline"],
            "actor": request.state.actor,
            "created_at": time.time(),
            "rerun_of": stored.id,
            "failed_only": failed,
        }
    )
    await _publish_trigger(request, event)
    run_id = store.run_id_for(event.id, event.project, stored.fields["pipeline"])
    await run_lists.mark_asked(lookup.redis_of(request), run_id)
    return JSONResponse({"run": run_id, "event": event.id, "rerun_of": stored.id}, status_code=202)


async def _failed_flag(request: Request) -> bool:
    """The body is optional (the plain re-run sends none)."""
    if not (await request.body()).strip():
        return False
    return bool(field(await json_body(request), "failed", bool, False))


def _check_failed_rerun(stored: store.StoredRun) -> None:
    status = stored.fields.get("status")
    if status in ACTIVE:
        raise ApiError(409, f"run {stored.id} is {status}: wait for it to end")
    if not carry.failed_any(RunState.model_validate_json(stored.fields["state"])):
        raise ApiError(409, f"run {stored.id} has no failed job to run again")
