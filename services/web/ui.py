"""The web UI: server-rendered pages (Jinja2) over the same store as the API; the
pages' live parts (validation as you type, statuses, log tails) are small plain
JavaScript in `static/app.js` calling the JSON API with the session cookie."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from runyard import cron
from schemas.pipeline import Pipeline
from schemas.subjects import key
from services.store import accounts, orgs, records
from services.store import runs as store

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "ry_session"
templates = Jinja2Templates(directory=str(HERE / "templates"))

DEFAULT_PIPELINE = """name: My first pipeline
triggers:
  manual:
    form:
      type: object
      properties:
        name: {type: string, default: world}
jobs:
  hello:
    steps:
      - name: Say hello
        run: echo "Hello, ${{ input.name }}!"
"""


async def _session(request: Request) -> tuple[accounts.Session, dict[str, str]] | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    return await accounts.session(request.app.state.redis, cookie) if cookie else None


def _to_login(request: Request) -> Response:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)


async def _page(request: Request, template: str, **context: Any) -> Response:
    found = await _session(request)
    if found is None:
        return _to_login(request)
    session, user = found
    r = request.app.state.redis
    context.setdefault("projects", await records.list_projects(r))
    return templates.TemplateResponse(
        request, template, {"user": user, "csrf": session.csrf, **context}
    )


async def login_page(request: Request) -> Response:
    return templates.TemplateResponse(
        request, "login.html", {"next": request.query_params.get("next", "/"), "error": None}
    )


async def login(request: Request) -> Response:
    form = await request.form()
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    api_key = str(form.get("api_key", "")).strip()
    target = str(form.get("next") or "/")
    r = request.app.state.redis
    if api_key:
        found = await records.check_api_key(r, api_key)
        name = found.get("name", "api") if found else ""
    else:
        found = await accounts.login(r, name, password)
    if found is None:
        error = "That API key is not valid." if api_key else "Wrong username or password."
        return templates.TemplateResponse(
            request, "login.html", {"next": target, "error": error}, status_code=401
        )
    token, _ = await accounts.open_session(r, name, api_key or None)
    response = RedirectResponse(target if target.startswith("/") else "/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="lax", max_age=accounts.SESSION_TTL
    )
    return response


async def logout(request: Request) -> Response:
    found = await _session(request)
    form = await request.form()
    if found and form.get("csrf") == found[0].csrf:
        await accounts.close_session(request.app.state.redis, request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


async def home(request: Request) -> Response:
    return await _page(request, "projects.html")


async def pipelines(request: Request) -> Response:
    project = request.path_params["project"]
    r = request.app.state.redis
    if not await records.project_exists(r, project):
        return await _page(request, "error.html", message=f"No project '{project}'.")
    found = await records.list_pipelines(r, project)
    return await _page(
        request, "pipelines.html", project=project, pipelines=found, section="pipelines"
    )


async def editor(request: Request) -> Response:
    project = request.path_params["project"]
    name = request.path_params.get("name")
    source, version = DEFAULT_PIPELINE, None
    if name is not None:
        try:
            record = await records.get_pipeline(request.app.state.redis, project, name)
        except records.NotFound as exc:
            return await _page(request, "error.html", message=str(exc))
        source, version = record.source, record.version
    return await _page(
        request,
        "editor.html",
        project=project,
        name=name,
        source=source,
        version=version,
        section="pipelines",
    )


async def pipeline(request: Request) -> Response:
    project, name = request.path_params["project"], request.path_params["name"]
    r = request.app.state.redis
    try:
        record = await records.get_pipeline(r, project, name)
    except records.NotFound as exc:
        return await _page(request, "error.html", message=str(exc))
    spec = records.validate_source(record.source, record.format).pipeline
    manual = spec.triggers.manual if spec else None
    form = (manual.form if manual else None) or {}
    history = await store.list_runs(r, project, name, 50)
    versions = sorted(await records.pipeline_versions(r, project, name), reverse=True)
    return await _page(
        request,
        "pipeline.html",
        project=project,
        pipeline=record,
        runs=history,
        form=json.dumps(form),
        schedules=_next_times(spec) if spec else [],
        webhook=await r.exists(key("webhook", project)),
        versions=versions,
        section="pipelines",
    )


async def version_page(request: Request) -> Response:
    project, name = request.path_params["project"], request.path_params["name"]
    version = int(request.path_params["version"])
    found = await records.pipeline_versions(request.app.state.redis, project, name)
    if version not in found:
        return await _page(request, "error.html", message=f"'{name}' has no version {version}.")
    return await _page(
        request,
        "version.html",
        project=project,
        name=name,
        version=version,
        source=found[version],
        section="pipelines",
    )


def _next_times(spec: Pipeline) -> list[tuple[str, str]]:
    """(cron, next fire time) of each schedule."""
    now = datetime.now(UTC)
    found = []
    for entry in spec.triggers.schedule:
        nxt = cron.trigger(entry.cron, entry.timezone).get_next_fire_time(None, now)
        found.append((entry.cron, nxt.strftime("%Y-%m-%d %H:%M:%S %Z") if nxt else "never"))
    return found


async def run_page(request: Request) -> Response:
    run_id = request.path_params["run"]
    stored = await store.load_run(request.app.state.redis, run_id)
    if stored is None:  # just asked for: the dispatcher makes it within moments
        waiting = {
            "id": run_id,
            "pipeline": None,
            "number": None,
            "status": "queued",
            "project": None,
        }
        return await _page(request, "run.html", run=waiting, project=None, section="runs")
    summary = stored.summary()
    return await _page(request, "run.html", run=summary, project=summary["project"], section="runs")


async def agents(request: Request) -> Response:
    """All agents; on a project, those assigned to it and the Manage agents dialog."""
    project = request.path_params.get("project")
    everyone = [a.public() for a in await records.list_agents(request.app.state.redis)]
    shown = [a for a in everyone if project is None or project in a["projects"]]
    return await _page(
        request, "agents.html", agents=shown, everyone=everyone, project=project, section="agents"
    )


async def agent_page(request: Request) -> Response:
    try:
        found = await records.get_agent(request.app.state.redis, request.path_params["agent"])
    except records.NotFound as exc:
        return await _page(request, "error.html", message=str(exc))
    return await _page(request, "agent.html", agent=found.public())


async def project_runs(request: Request) -> Response:
    """The newest runs of every pipeline of a project."""
    project = request.path_params["project"]
    r = request.app.state.redis
    found = []
    for record in await records.list_pipelines(r, project):
        found += await store.list_runs(r, project, record.name, 20)
    found.sort(key=lambda run: run["created_at"] or 0, reverse=True)
    return await _page(request, "runs.html", project=project, runs=found[:100], section="runs")


async def settings(request: Request) -> Response:
    """Users, organizations and API keys (admins); changes go through the API."""
    found = await _session(request)
    if found is None:
        return _to_login(request)
    if found[1].get("role") != "admin":
        return await _page(request, "error.html", message="Settings are for admins.")
    r = request.app.state.redis
    return await _page(
        request, "settings.html", users=await accounts.list_users(r), orgs=await orgs.list_orgs(r)
    )


routes = [
    Route("/login", login_page),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/", home),
    Route("/agents", agents),
    Route("/settings", settings),
    Route("/p/{project}", pipelines),
    Route("/p/{project}/agents", agents),
    Route("/p/{project}/runs", project_runs),
    Route("/agents/{agent}", agent_page),
    Route("/p/{project}/pipelines/new", editor),
    Route("/p/{project}/pipelines/{name}/edit", editor),
    Route("/p/{project}/pipelines/{name}", pipeline),
    Route("/p/{project}/pipelines/{name}/versions/{version:int}", version_page),
    Route("/runs/{run}", run_page),
    Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
]
