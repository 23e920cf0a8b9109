"""The REST API (JSON): projects, pipelines, agents and runs. The CLI uses it; every
page of the UI will have its twin here. Who may call each route is declared with it
(services/web/authz.py) and checked before the handler runs; keys, users and
organizations are in services/web/access.py."""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.aio.client import Client
from starlette.requests import Request
from starlette.responses import JSONResponse

from runyard import cron, forms
from runyard.engine.contexts import form_inputs
from runyard.engine.state import RunState
from schemas import subjects
from schemas.messages import RunCancel, TriggerEvent
from schemas.subjects import key
from services.store import crypto, orgs, records
from services.store import runs as store
from services.store.connection import Redis
from services.web import authz, checks
from services.web.authz import SIGNED_IN, route
from services.web.errors import ApiError, field, json_body, query_int

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def redis_of(request: Request) -> Redis:
    r: Redis = request.app.state.redis
    return r


def nats_of(request: Request) -> Client:
    nc: Client = request.app.state.nats
    return nc


def _project_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise ApiError(422, "a project name is 1-64 letters, digits, '-' or '_'")
    return name


async def _project(request: Request) -> str:
    name = request.path_params["project"]
    if not await records.project_exists(redis_of(request), name):
        raise ApiError(404, f"no project '{name}'")
    return str(name)


async def _pipeline(request: Request) -> records.PipelineRecord:
    project = await _project(request)
    try:
        return await records.get_pipeline(redis_of(request), project, request.path_params["name"])
    except records.NotFound as exc:
        raise ApiError(404, str(exc)) from None


# --- projects -------------------------------------------------------------------------


async def list_projects(request: Request) -> JSONResponse:
    """The projects the caller has a role in."""
    return JSONResponse([{"name": n} for n in await checks.visible_projects(request)])


async def create_project(request: Request) -> JSONResponse:
    """A new project, in the organization `org` when one is named (its owners make
    projects; a project outside every organization is for site admins to make)."""
    body = await json_body(request)
    name = _project_name(field(body, "name", str))
    home = field(body, "org", str) if body.get("org") is not None else None
    r = redis_of(request)
    if not await records.create_project(r, name):
        raise ApiError(409, f"project '{name}' exists already")
    if home is not None:
        await orgs.add_project(r, home, name)
    await checks.note(request, "project.create", name, org_names=[home] if home else [])
    return JSONResponse({"name": name, "org": home}, status_code=201)


# --- secrets --------------------------------------------------------------------------


async def list_secrets(request: Request) -> JSONResponse:
    project = await _project(request)
    return JSONResponse({"names": await records.secret_names(redis_of(request), project)})


async def set_secret(request: Request) -> JSONResponse:
    project = await _project(request)
    name = request.path_params["secret"]
    if not name.replace("_", "").isalnum():
        raise ApiError(422, "a secret name is letters, digits and '_'")
    value = field(await json_body(request), "value", str)
    try:
        await records.set_secret(redis_of(request), project, name, value)
    except crypto.KeyMissing as exc:
        raise ApiError(503, str(exc)) from None
    await checks.note(request, "secret.set", f"{project}/{name}", projects=[project])
    return JSONResponse({"name": name})


async def delete_secret(request: Request) -> JSONResponse:
    project = await _project(request)
    name = request.path_params["secret"]
    if not await records.delete_secret(redis_of(request), project, name):
        raise ApiError(404, f"no secret '{name}' in project '{project}'")
    await checks.note(request, "secret.delete", f"{project}/{name}", projects=[project])
    return JSONResponse({"deleted": name})


async def get_webhook(request: Request) -> JSONResponse:
    project = await _project(request)
    configured = await redis_of(request).exists(key("webhook", project))
    return JSONResponse({"configured": bool(configured)})


async def set_webhook(request: Request) -> JSONResponse:
    """Set the project's webhook secret (given, or a new random one, shown once)."""
    project = await _project(request)
    body = await json_body(request)
    secret = field(body, "secret", str, None) if body.get("secret") is not None else None
    secret = secret or secrets.token_urlsafe(32)
    if len(secret) < 16:
        raise ApiError(422, "a webhook secret needs at least 16 characters")
    try:
        await records.set_webhook_secret(redis_of(request), project, secret)
    except crypto.KeyMissing as exc:
        raise ApiError(503, str(exc)) from None
    await checks.note(request, "webhook.set", project, projects=[project])
    return JSONResponse({"secret": secret})


# --- pipelines ------------------------------------------------------------------------


async def _validated(request: Request) -> tuple[str, str, str]:
    """(name, source, format) of a pipeline body, or 422 with every problem."""
    body = await json_body(request)
    source = field(body, "source", str)
    fmt = records.source_format(
        source, field(body, "format", str, None) if "format" in body else None
    )
    result = records.validate_source(source, fmt)
    if not result.ok or result.pipeline is None:
        problems = [
            {"line": p.line, "column": p.column, "message": p.message} for p in result.problems
        ]
        raise ApiError(422, f"the pipeline has {len(problems)} problem(s)", problems=problems)
    return result.pipeline.name, source, fmt


async def validate(request: Request) -> JSONResponse:
    """Every problem of a pipeline text, for the editor that validates as you type."""
    body = await json_body(request)
    source = field(body, "source", str)
    fmt = records.source_format(source, body.get("format"))
    result = records.validate_source(source, fmt)
    problems = [{"line": p.line, "column": p.column, "message": p.message} for p in result.problems]
    if result.over_bounds:  # too large to check: 413, with the reason where it stands
        raise ApiError(413, result.problems[0].message, problems=problems)
    return JSONResponse({"problems": problems})


async def list_pipelines(request: Request) -> JSONResponse:
    project = await _project(request)
    found = await records.list_pipelines(redis_of(request), project)
    return JSONResponse([{k: v for k, v in p.public().items() if k != "source"} for p in found])


async def create_pipeline(request: Request) -> JSONResponse:
    project = await _project(request)
    name, source, fmt = await _validated(request)
    r = redis_of(request)
    try:
        await records.get_pipeline(r, project, name)
        raise ApiError(409, f"pipeline '{name}' exists already in '{project}'; update it instead")
    except records.NotFound:
        pass
    version = await records.save_pipeline(r, project, name, source, fmt)
    await _pipelines_changed(request, project, name)
    return JSONResponse({"project": project, "name": name, "version": version}, status_code=201)


async def update_pipeline(request: Request) -> JSONResponse:
    current = await _pipeline(request)
    name, source, fmt = await _validated(request)
    if name != current.name:
        raise ApiError(
            422,
            f"the source names '{name}', not '{current.name}'; create a new pipeline to rename one",
        )
    version = await records.save_pipeline(redis_of(request), current.project, name, source, fmt)
    await _pipelines_changed(request, current.project, name)
    return JSONResponse({"project": current.project, "name": name, "version": version})


async def get_pipeline(request: Request) -> JSONResponse:
    record = await _pipeline(request)
    result = records.validate_source(record.source, record.format)
    schedules = []
    if result.pipeline is not None:
        now = datetime.now(UTC)
        for entry in result.pipeline.triggers.schedule:
            nxt = cron.trigger(entry.cron, entry.timezone).get_next_fire_time(None, now)
            schedules.append(
                {
                    "cron": entry.cron,
                    "timezone": entry.timezone,
                    "next": nxt.isoformat() if nxt else None,
                }
            )
    return JSONResponse({**record.public(), "schedules": schedules})


async def pipeline_versions(request: Request) -> JSONResponse:
    current = await _pipeline(request)
    found = await records.pipeline_versions(redis_of(request), current.project, current.name)
    return JSONResponse([{"version": v, "source": s} for v, s in found.items()])


async def delete_pipeline(request: Request) -> JSONResponse:
    current = await _pipeline(request)
    await records.delete_pipeline(redis_of(request), current.project, current.name)
    await _pipelines_changed(request, current.project, current.name)
    return JSONResponse({"deleted": current.name})


async def _pipelines_changed(request: Request, project: str, name: str) -> None:
    await nats_of(request).publish(subjects.PIPELINES_CHANGED, f"{project}/{name}".encode())


# --- runs -----------------------------------------------------------------------------


async def _publish_trigger(request: Request, event: TriggerEvent) -> None:
    js = nats_of(request).jetstream()
    await js.publish(
        subjects.events(event.kind, event.project),
        event.encode(),
        headers={"Nats-Msg-Id": event.id},
    )


async def start_run(request: Request) -> JSONResponse:
    pipeline = await _pipeline(request)
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
    return JSONResponse({"run": run_id, "event": event.id}, status_code=202)


async def list_runs(request: Request) -> JSONResponse:
    pipeline = await _pipeline(request)
    limit = min(query_int(request, "limit", 50, low=1), 500)
    before = query_int(request, "before", 0, low=0) or None
    found = await store.list_runs(redis_of(request), pipeline.project, pipeline.name, limit, before)
    return JSONResponse(found)


async def stored_run(request: Request) -> store.StoredRun:
    run_id = request.path_params["run"]
    stored = await store.load_run(redis_of(request), run_id)
    if stored is None:
        raise ApiError(404, f"no run '{run_id}' (a run just started appears within moments)")
    return stored


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
    return JSONResponse(run_view(await stored_run(request)))


async def cancel_run(request: Request) -> JSONResponse:
    stored = await stored_run(request)
    project = stored.fields["project"]
    cancel = RunCancel(run=stored.id, by=request.state.actor, at=time.time())
    js = nats_of(request).jetstream()
    await js.publish(
        subjects.run_control(project),
        cancel.encode(),
        headers={"Nats-Msg-Id": f"cancel:{stored.id}"},
    )
    return JSONResponse({"run": stored.id, "cancel": "requested"}, status_code=202)


async def rerun(request: Request) -> JSONResponse:
    stored = await stored_run(request)
    before = TriggerEvent.model_validate(stored.json("event"))
    event = before.model_copy(
        update={
            "id": uuid.uuid4().hex,
            "pipeline": stored.fields["pipeline"],
            "actor": request.state.actor,
            "created_at": time.time(),
        }
    )
    await _publish_trigger(request, event)
    run_id = store.run_id_for(event.id, event.project, stored.fields["pipeline"])
    return JSONResponse({"run": run_id, "event": event.id, "rerun_of": stored.id}, status_code=202)


# --- agents ---------------------------------------------------------------------------


async def _shown(request: Request, agent: records.AgentRecord) -> dict[str, Any]:
    """The agent as the caller may see it: only the projects they have a role in."""
    shown = agent.public()
    if not checks.is_admin(checks.principal(request)):
        roles = await orgs.roles_in(redis_of(request), checks.principal(request), agent.projects)
        shown["projects"] = [p for p in agent.projects if roles[p]]
    return shown


async def list_agents(request: Request) -> JSONResponse:
    """The agents the caller may see (services/web/authz.py: `can_read_agent`)."""
    found = await checks.readable_agents(request, await records.list_agents(redis_of(request)))
    return JSONResponse([await _shown(request, a) for a in found])


async def create_agent(request: Request) -> JSONResponse:
    """A new agent (its token shown once) serving `projects`: the route's rule needs
    maintainer in each of them (an agent for no project: a site admin)."""
    body = await json_body(request)
    name = field(body, "name", str)
    labels = field(body, "labels", list, [])
    projects = field(body, "projects", list, [])
    if not all(isinstance(x, str) and x for x in labels + projects):
        raise ApiError(422, "'labels' and 'projects' are lists of names")
    r = redis_of(request)
    for project in projects:
        if not await records.project_exists(r, project):
            raise ApiError(404, f"no project '{project}'")
    made_by = checks.principal_id(checks.principal(request))
    agent_id, token = await records.create_agent(r, name, labels, projects, made_by)
    await checks.note(
        request, "agent.create", agent_id, projects=projects, name=name, labels=labels
    )
    return JSONResponse(
        {
            "id": agent_id,
            "name": name,
            "token": token,
            "nats_url": request.app.state.public_nats_url,
            "ca": request.app.state.nats_ca,
        },
        status_code=201,
    )


async def _agent(request: Request) -> records.AgentRecord:
    try:
        return await records.get_agent(redis_of(request), request.path_params["agent"])
    except records.NotFound as exc:
        raise ApiError(404, str(exc)) from None


async def get_agent(request: Request) -> JSONResponse:
    return JSONResponse(await _shown(request, await _agent(request)))


async def agent_metrics(request: Request) -> JSONResponse:
    """The agent's heartbeat history, oldest first: [{at, cpu, mem}] (percent)."""
    agent = await _agent(request)
    raw = await redis_of(request).lrange(records.agent_key(agent.id, "metrics"), 0, -1)
    return JSONResponse([orjson.loads(x) for x in reversed(raw or [])])


async def delete_agent(request: Request) -> JSONResponse:
    agent = await _agent(request)
    await records.delete_agent(redis_of(request), agent.id)
    # the dispatcher cuts its connections off; its reconnects are refused from now on
    await nats_of(request).publish(subjects.AGENTS_REVOKED, agent.id.encode())
    await checks.note(request, "agent.delete", agent.id, projects=agent.projects, name=agent.name)
    return JSONResponse({"deleted": agent.id})


async def assign_agent(request: Request) -> JSONResponse:
    agent = await _agent(request)
    project = await _project(request)
    on = request.method == "PUT"
    await records.assign_agent(redis_of(request), agent.id, project, on)
    what = "agent.assign" if on else "agent.unassign"
    await checks.note(request, what, agent.id, projects=[project, *agent.projects], project=project)
    return JSONResponse(await _shown(request, await _agent(request)))


MAINTAINER, OWNER, VIEWER = (authz.project(r) for r in ("maintainer", "owner", "viewer"))
PIPELINE = "/api/projects/{project}/pipelines/{name}"

routes = [
    route("/api/validate", validate, SIGNED_IN, ["POST"]),
    route("/api/projects", list_projects, SIGNED_IN.but("the projects the caller has a role in")),
    route("/api/projects", create_project, authz.body_org("owner"), ["POST"]),
    route("/api/projects/{project}/webhook", get_webhook, VIEWER),
    route("/api/projects/{project}/webhook", set_webhook, OWNER, ["PUT"]),
    route("/api/projects/{project}/secrets", list_secrets, VIEWER.but("names only")),
    route("/api/projects/{project}/secrets/{secret}", set_secret, OWNER, ["PUT"]),
    route("/api/projects/{project}/secrets/{secret}", delete_secret, OWNER, ["DELETE"]),
    route("/api/projects/{project}/pipelines", list_pipelines, VIEWER),
    route("/api/projects/{project}/pipelines", create_pipeline, MAINTAINER, ["POST"]),
    route(PIPELINE, get_pipeline, VIEWER),
    route(PIPELINE, update_pipeline, MAINTAINER, ["PUT"]),
    route(PIPELINE, delete_pipeline, MAINTAINER, ["DELETE"]),
    route(f"{PIPELINE}/versions", pipeline_versions, VIEWER),
    route(f"{PIPELINE}/runs", list_runs, VIEWER),
    route(f"{PIPELINE}/runs", start_run, authz.run_button(), ["POST"]),
    route("/api/runs/{run}", get_run, authz.run("viewer")),
    route("/api/runs/{run}/cancel", cancel_run, authz.run("maintainer"), ["POST"]),
    route("/api/runs/{run}/rerun", rerun, authz.run("maintainer"), ["POST"]),
    route("/api/agents", list_agents, SIGNED_IN.but("the agents the caller may see")),
    route("/api/agents", create_agent, authz.body_projects("maintainer"), ["POST"]),
    route("/api/agents/{agent}", get_agent, authz.agent("see")),
    route("/api/agents/{agent}/metrics", agent_metrics, authz.agent("see")),
    route("/api/agents/{agent}", delete_agent, authz.agent("manage"), ["DELETE"]),
    route(
        "/api/agents/{agent}/projects/{project}",
        assign_agent,
        authz.agent("manage") & MAINTAINER,
        ["PUT", "DELETE"],
    ),
]
