"""The REST API (JSON): projects, secrets, webhooks and pipelines here, runs in
`runs_api`, agents in `agents_api`; all routes listed at the end. The CLI uses it; every
page of the UI has its twin here. Who may call each route is declared with it
(services/web/authz.py) and checked before the handler runs; keys, users and
organizations are in services/web/access.py."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse

from runyard import cron
from schemas import subjects
from schemas.subjects import key
from services.store import crypto, orgs, records
from services.web import agents_api, authz, checks, lookup, runs_api
from services.web.authz import SIGNED_IN, route
from services.web.errors import ApiError, field, json_body

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _project_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise ApiError(422, "a project name is 1-64 letters, digits, '-' or '_'")
    return name


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
    r = lookup.redis_of(request)
    if not await records.create_project(r, name):
        raise ApiError(409, f"project '{name}' exists already")
    if home is not None:
        await orgs.add_project(r, home, name)
    await checks.note(request, "project.create", name, org_names=[home] if home else [])
    return JSONResponse({"name": name, "org": home}, status_code=201)


# --- secrets --------------------------------------------------------------------------


async def list_secrets(request: Request) -> JSONResponse:
    project = await lookup.project(request)
    return JSONResponse({"names": await records.secret_names(lookup.redis_of(request), project)})


async def set_secret(request: Request) -> JSONResponse:
    project = await lookup.project(request)
    name = request.path_params["secret"]
    if not name.replace("_", "").isalnum():
        raise ApiError(422, "a secret name is letters, digits and '_'")
    value = field(await json_body(request), "value", str)
    try:
        await records.set_secret(lookup.redis_of(request), project, name, value)
    except crypto.KeyMissing as exc:
        raise ApiError(503, str(exc)) from None
    await checks.note(request, "secret.set", f"{project}/{name}", projects=[project])
    return JSONResponse({"name": name})


async def delete_secret(request: Request) -> JSONResponse:
    project = await lookup.project(request)
    name = request.path_params["secret"]
    if not await records.delete_secret(lookup.redis_of(request), project, name):
        raise ApiError(404, f"no secret '{name}' in project '{project}'")
    await checks.note(request, "secret.delete", f"{project}/{name}", projects=[project])
    return JSONResponse({"deleted": name})


async def get_webhook(request: Request) -> JSONResponse:
    project = await lookup.project(request)
    configured = await lookup.redis_of(request).exists(key("webhook", project))
    return JSONResponse({"configured": bool(configured)})


async def set_webhook(request: Request) -> JSONResponse:
    """Set the project's webhook secret (given, or a new random one, shown once)."""
    project = await lookup.project(request)
    body = await json_body(request)
    secret = field(body, "secret", str, None) if body.get("secret") is not None else None
    secret = secret or secrets.token_urlsafe(32)
    if len(secret) < 16:
        raise ApiError(422, "a webhook secret needs at least 16 characters")
    try:
        await records.set_webhook_secret(lookup.redis_of(request), project, secret)
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
    project = await lookup.project(request)
    found = await records.list_pipelines(lookup.redis_of(request), project)
    return JSONResponse([{k: v for k, v in p.public().items() if k != "source"} for p in found])


async def create_pipeline(request: Request) -> JSONResponse:
    project = await lookup.project(request)
    name, source, fmt = await _validated(request)
    r = lookup.redis_of(request)
    try:
        await records.get_pipeline(r, project, name)
        raise ApiError(409, f"pipeline '{name}' exists already in '{project}'; update it instead")
    except records.NotFound:
        pass
    version = await records.save_pipeline(r, project, name, source, fmt)
    await _pipelines_changed(request, project, name)
    return JSONResponse({"project": project, "name": name, "version": version}, status_code=201)


async def update_pipeline(request: Request) -> JSONResponse:
    current = await lookup.pipeline(request)
    name, source, fmt = await _validated(request)
    if name != current.name:
        raise ApiError(
            422,
            f"the source names '{name}', not '{current.name}'; create a new pipeline to rename one",
        )
    version = await records.save_pipeline(
        lookup.redis_of(request), current.project, name, source, fmt
    )
    await _pipelines_changed(request, current.project, name)
    return JSONResponse({"project": current.project, "name": name, "version": version})


async def get_pipeline(request: Request) -> JSONResponse:
    record = await lookup.pipeline(request)
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
    current = await lookup.pipeline(request)
    found = await records.pipeline_versions(lookup.redis_of(request), current.project, current.name)
    return JSONResponse([{"version": v, "source": s} for v, s in found.items()])


async def delete_pipeline(request: Request) -> JSONResponse:
    current = await lookup.pipeline(request)
    await records.delete_pipeline(lookup.redis_of(request), current.project, current.name)
    await _pipelines_changed(request, current.project, current.name)
    return JSONResponse({"deleted": current.name})


async def _pipelines_changed(request: Request, project: str, name: str) -> None:
    await lookup.nats_of(request).publish(subjects.PIPELINES_CHANGED, f"{project}/{name}".encode())


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
    route("/api/projects/{project}/runs", runs_api.project_runs, VIEWER),
    route(f"{PIPELINE}/runs", runs_api.list_runs, VIEWER),
    route(f"{PIPELINE}/runs", runs_api.start_run, authz.run_button(), ["POST"]),
    route("/api/runs/{run}", runs_api.get_run, authz.run("viewer")),
    route("/api/runs/{run}/cancel", runs_api.cancel_run, authz.run("maintainer"), ["POST"]),
    route("/api/runs/{run}/rerun", runs_api.rerun, authz.run("maintainer"), ["POST"]),
    route("/api/agents", agents_api.list_agents, SIGNED_IN.but("the agents the caller may see")),
    route("/api/agents", agents_api.create_agent, authz.body_projects("maintainer"), ["POST"]),
    route("/api/agents/{agent}", agents_api.get_agent, authz.agent("see")),
    route("/api/agents/{agent}/metrics", agents_api.agent_metrics, authz.agent("see")),
    route(
        "/api/agents/{agent}/busy",
        agents_api.agent_busy,
        authz.agent("see").but("from the runs of projects the caller has a role in"),
    ),
    route("/api/agents/{agent}", agents_api.delete_agent, authz.agent("manage"), ["DELETE"]),
    route(
        "/api/agents/{agent}/projects/{project}",
        agents_api.assign_agent,
        authz.agent("manage") & MAINTAINER,
        ["PUT", "DELETE"],
    ),
]
