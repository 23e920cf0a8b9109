"""The REST API (JSON): projects, pipelines, agents and runs. The CLI uses it; every
page of the UI will have its twin here."""

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
from starlette.routing import Route

from runyard import cron, forms
from runyard.engine.contexts import form_inputs
from runyard.engine.state import RunState
from schemas import subjects
from schemas.messages import RunCancel, TriggerEvent
from schemas.subjects import key
from services.store import accounts, crypto, orgs, records
from services.store import runs as store
from services.store.connection import Redis
from services.web.errors import ApiError, field, json_body

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
    return JSONResponse([{"name": n} for n in await records.list_projects(redis_of(request))])


async def create_project(request: Request) -> JSONResponse:
    name = _project_name(field(await json_body(request), "name", str))
    if not await records.create_project(redis_of(request), name):
        raise ApiError(409, f"project '{name}' exists already")
    return JSONResponse({"name": name}, status_code=201)


# --- secrets --------------------------------------------------------------------------


async def list_secrets(request: Request) -> JSONResponse:
    project = await _project(request)
    return JSONResponse({"names": await records.secret_names(redis_of(request), project)})


async def set_secret(request: Request) -> JSONResponse:
    project = await _project(request)
    await require(request, project, "owner", "setting secrets")
    name = request.path_params["secret"]
    if not name.replace("_", "").isalnum():
        raise ApiError(422, "a secret name is letters, digits and '_'")
    value = field(await json_body(request), "value", str)
    try:
        await records.set_secret(redis_of(request), project, name, value)
    except crypto.KeyMissing as exc:
        raise ApiError(503, str(exc)) from None
    return JSONResponse({"name": name})


async def delete_secret(request: Request) -> JSONResponse:
    project = await _project(request)
    await require(request, project, "owner", "deleting secrets")
    name = request.path_params["secret"]
    if not await records.delete_secret(redis_of(request), project, name):
        raise ApiError(404, f"no secret '{name}' in project '{project}'")
    return JSONResponse({"deleted": name})


async def get_webhook(request: Request) -> JSONResponse:
    project = await _project(request)
    configured = await redis_of(request).exists(key("webhook", project))
    return JSONResponse({"configured": bool(configured)})


async def set_webhook(request: Request) -> JSONResponse:
    """Set the project's webhook secret (given, or a new random one, shown once)."""
    project = await _project(request)
    await require(request, project, "owner", "setting the webhook secret")
    body = await json_body(request)
    secret = field(body, "secret", str, None) if body.get("secret") is not None else None
    secret = secret or secrets.token_urlsafe(32)
    if len(secret) < 16:
        raise ApiError(422, "a webhook secret needs at least 16 characters")
    try:
        await records.set_webhook_secret(redis_of(request), project, secret)
    except crypto.KeyMissing as exc:
        raise ApiError(503, str(exc)) from None
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
    return JSONResponse({"problems": problems})


async def list_pipelines(request: Request) -> JSONResponse:
    project = await _project(request)
    found = await records.list_pipelines(redis_of(request), project)
    return JSONResponse([{k: v for k, v in p.public().items() if k != "source"} for p in found])


async def create_pipeline(request: Request) -> JSONResponse:
    project = await _project(request)
    await require(request, project, "maintainer", "creating pipelines")
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
    await require(request, current.project, "maintainer", "changing pipelines")
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
    await require(request, current.project, "maintainer", "deleting pipelines")
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


async def require(request: Request, project: str, need: str, what: str) -> None:
    """403 unless the caller (a key, or a user through their organizations and teams)
    has at least `need` in `project`."""
    principal = request.state.key
    if principal.get("kind") == "user":
        have = await orgs.user_role(redis_of(request), principal, project)
    else:
        have = records.role_in(principal, project)
    if not records.role_at_least(have, need):
        raise ApiError(403, f"{what} needs the role {need} in '{project}'; you have {have}")


def require_admin(request: Request, what: str) -> None:
    if request.state.key.get("role") != "admin":
        raise ApiError(403, f"{what} needs an admin")


async def start_run(request: Request) -> JSONResponse:
    pipeline = await _pipeline(request)
    body = await json_body(request)
    inputs = field(body, "inputs", dict, {})
    spec = records.validate_source(pipeline.source, pipeline.format).pipeline
    manual = spec.triggers.manual if spec else None
    await require(
        request,
        pipeline.project,
        (manual.role if manual else None) or "maintainer",
        f"running '{pipeline.name}'",
    )
    if spec is not None:
        inputs = form_inputs(spec, inputs)
        if bad := forms.problems(manual.form if manual else None, inputs):
            raise ApiError(422, f"{len(bad)} run input(s) do not fit the form", problems=bad)
    ref = field(body, "ref", str, None) if body.get("ref") is not None else None
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
    limit = int(request.query_params.get("limit", "50"))
    before = request.query_params.get("before")
    found = await store.list_runs(
        redis_of(request),
        pipeline.project,
        pipeline.name,
        min(limit, 500),
        int(before) if before else None,
    )
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
    await require(request, stored.fields["project"], "maintainer", "cancelling runs")
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
    await require(request, stored.fields["project"], "maintainer", "re-running")
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


# --- API keys -------------------------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    key = request.state.key
    return JSONResponse(
        {
            "name": key.get("name"),
            "role": key.get("role"),
            "roles": orjson.loads(key.get("roles") or "{}"),
        }
    )


async def create_key(request: Request) -> JSONResponse:
    """A new API key (admin only): `role` everywhere, and/or per project in `roles`."""
    require_admin(request, "making API keys")
    body = await json_body(request)
    name = field(body, "name", str)
    role = field(body, "role", str, "viewer")
    roles = field(body, "roles", dict, {})
    if any(r not in records.ROLES for r in [role, *roles.values()]):
        raise ApiError(422, f"roles are one of {', '.join(records.ROLES)}")
    token = await records.create_api_key(redis_of(request), name, role, roles)
    return JSONResponse({"name": name, "key": token}, status_code=201)


# --- users, organizations, teams (admin) ----------------------------------------------


def _role(body: dict[str, Any], default: str | None = "viewer") -> str | None:
    role = body.get("role", default)
    if role is not None and role not in records.ROLES:
        raise ApiError(422, f"a role is one of {', '.join(records.ROLES)}")
    return role


async def create_user(request: Request) -> JSONResponse:
    require_admin(request, "making users")
    body = await json_body(request)
    name, password = field(body, "name", str), field(body, "password", str)
    if len(password) < 8:
        raise ApiError(422, "a password needs at least 8 characters")
    roles = field(body, "roles", dict, {})
    if not await accounts.create_user(
        redis_of(request), name, password, _role(body) or "viewer", roles
    ):
        raise ApiError(409, f"user '{name}' exists already")
    return JSONResponse({"name": name}, status_code=201)


async def list_users(request: Request) -> JSONResponse:
    require_admin(request, "listing users")
    return JSONResponse(await accounts.list_users(redis_of(request)))


async def list_orgs(request: Request) -> JSONResponse:
    return JSONResponse(await orgs.list_orgs(redis_of(request)))


async def create_org(request: Request) -> JSONResponse:
    require_admin(request, "making organizations")
    name = _project_name(field(await json_body(request), "name", str))
    if not await orgs.create_org(redis_of(request), name):
        raise ApiError(409, f"organization '{name}' exists already")
    return JSONResponse({"name": name}, status_code=201)


async def org_change(request: Request) -> JSONResponse:
    """PUT/DELETE members, projects, teams, team members and team projects."""
    require_admin(request, "changing organizations")
    r, p = redis_of(request), request.path_params
    on = request.method == "PUT"
    body = await json_body(request) if on and await request.body() else {}
    try:
        if "team" in p and "user" in p:
            await orgs.set_team_member(r, p["org"], p["team"], p["user"], on)
        elif "team" in p and "project" in p:
            await orgs.set_team_project(
                r, p["org"], p["team"], p["project"], _role(body) if on else None
            )
        elif "team" in p:
            await orgs.create_team(r, p["org"], p["team"])
        elif "user" in p:
            await orgs.set_member(r, p["org"], p["user"], _role(body) if on else None)
        elif "project" in p:
            if not await records.project_exists(r, p["project"]):
                raise ApiError(404, f"no project '{p['project']}'")
            await orgs.add_project(r, p["org"], p["project"])
        elif "agent" in p:
            await orgs.assign_agent_to_org(r, p["agent"], p["org"], on)
    except records.NotFound as exc:
        raise ApiError(404, str(exc)) from None
    return JSONResponse({"ok": True})


# --- agents ---------------------------------------------------------------------------


async def list_agents(request: Request) -> JSONResponse:
    found = await records.list_agents(redis_of(request))
    return JSONResponse([a.public() for a in found])


async def create_agent(request: Request) -> JSONResponse:
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
    agent_id, token = await records.create_agent(r, name, labels, projects)
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
    return JSONResponse((await _agent(request)).public())


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
    return JSONResponse({"deleted": agent.id})


async def assign_agent(request: Request) -> JSONResponse:
    agent = await _agent(request)
    project = await _project(request)
    await records.assign_agent(redis_of(request), agent.id, project, request.method == "PUT")
    return JSONResponse((await _agent(request)).public())


routes = [
    Route("/api/validate", validate, methods=["POST"]),
    Route("/api/projects", list_projects),
    Route("/api/projects", create_project, methods=["POST"]),
    Route("/api/projects/{project}/webhook", get_webhook),
    Route("/api/projects/{project}/webhook", set_webhook, methods=["PUT"]),
    Route("/api/projects/{project}/secrets", list_secrets),
    Route("/api/projects/{project}/secrets/{secret}", set_secret, methods=["PUT"]),
    Route("/api/projects/{project}/secrets/{secret}", delete_secret, methods=["DELETE"]),
    Route("/api/projects/{project}/pipelines", list_pipelines),
    Route("/api/projects/{project}/pipelines", create_pipeline, methods=["POST"]),
    Route("/api/projects/{project}/pipelines/{name}", get_pipeline),
    Route("/api/projects/{project}/pipelines/{name}", update_pipeline, methods=["PUT"]),
    Route("/api/projects/{project}/pipelines/{name}", delete_pipeline, methods=["DELETE"]),
    Route("/api/projects/{project}/pipelines/{name}/versions", pipeline_versions),
    Route("/api/projects/{project}/pipelines/{name}/runs", list_runs),
    Route("/api/projects/{project}/pipelines/{name}/runs", start_run, methods=["POST"]),
    Route("/api/runs/{run}", get_run),
    Route("/api/runs/{run}/cancel", cancel_run, methods=["POST"]),
    Route("/api/runs/{run}/rerun", rerun, methods=["POST"]),
    Route("/api/keys", create_key, methods=["POST"]),
    Route("/api/users", list_users),
    Route("/api/users", create_user, methods=["POST"]),
    Route("/api/orgs", list_orgs),
    Route("/api/orgs", create_org, methods=["POST"]),
    Route("/api/orgs/{org}/members/{user}", org_change, methods=["PUT", "DELETE"]),
    Route("/api/orgs/{org}/projects/{project}", org_change, methods=["PUT"]),
    Route("/api/orgs/{org}/agents/{agent}", org_change, methods=["PUT", "DELETE"]),
    Route("/api/orgs/{org}/teams/{team}", org_change, methods=["PUT"]),
    Route("/api/orgs/{org}/teams/{team}/members/{user}", org_change, methods=["PUT", "DELETE"]),
    Route("/api/orgs/{org}/teams/{team}/projects/{project}", org_change, methods=["PUT", "DELETE"]),
    Route("/api/whoami", whoami),
    Route("/api/agents", list_agents),
    Route("/api/agents", create_agent, methods=["POST"]),
    Route("/api/agents/{agent}", get_agent),
    Route("/api/agents/{agent}/metrics", agent_metrics),
    Route("/api/agents/{agent}", delete_agent, methods=["DELETE"]),
    Route("/api/agents/{agent}/projects/{project}", assign_agent, methods=["PUT", "DELETE"]),
]
