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
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from runyard import cron
from schemas.pipeline import Pipeline
from schemas.subjects import key
from services.store import accounts, apikeys, audit, orgs, records, run_lists
from services.store import runs as store
from services.web import authz, checks
from services.web import login as sign_in
from services.web.authz import PUBLIC, SIGNED_IN, route

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "ry_session"
RUNS_PAGE = 25  # runs a list shows at a time
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["when"] = _when

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


async def _page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    found = await _session(request)
    if found is None:
        return _to_login(request)
    session, user = found
    context.setdefault("projects", await checks.visible_projects(request))
    return templates.TemplateResponse(
        request, template, {"user": user, "csrf": session.csrf, **context}, status_code=status
    )


async def _missing(request: Request, message: str) -> Response:
    """The not-found page, with the status to match."""
    return await _page(request, "error.html", 404, message=message)


async def login_page(request: Request) -> Response:
    target = sign_in.safe_next(request.query_params.get("next"))
    return templates.TemplateResponse(request, "login.html", {"next": target, "error": None})


async def login(request: Request) -> Response:
    """Throttled per account and address (services/web/throttle.py); then only to a
    path of this site."""
    form = await request.form()
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    api_key = str(form.get("api_key", "")).strip()
    target = sign_in.safe_next(str(form.get("next") or "/"))
    account = None if api_key else name
    if wait := await sign_in.refused(request, account):
        return templates.TemplateResponse(
            request,
            "login.html",
            {"next": target, "error": sign_in.wait_text(wait)},
            status_code=429,
            headers={"Retry-After": str(wait)},
        )
    r = request.app.state.redis
    if api_key:
        found = await records.check_api_key(r, api_key)
        name = found.get("name", "api") if found else ""
    else:
        found = await accounts.login(r, name, password)
    if found is None:
        await sign_in.failed(request, account)
        error = "That API key is not valid." if api_key else "Wrong username or password."
        return templates.TemplateResponse(
            request, "login.html", {"next": target, "error": error}, status_code=401
        )
    await sign_in.succeeded(request, account)
    token, _ = await accounts.open_session(r, name, api_key or None)
    response = RedirectResponse(target, status_code=303)
    sign_in.set_session(response, request, SESSION_COOKIE, token, accounts.SESSION_TTL)
    return response


async def logout(request: Request) -> Response:
    found = await _session(request)
    form = await request.form()
    if found and form.get("csrf") == found[0].csrf:
        await accounts.close_session(request.app.state.redis, request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    sign_in.clear_session(response, request, SESSION_COOKIE)
    return response


async def home(request: Request) -> Response:
    """The caller's projects, and a form to make one where they may: in an organization
    they own, or (site admins) outside every organization."""
    owned = await checks.owned_orgs(request)
    if owned is None:  # a site admin: every organization, or none
        owned = {o["name"] for o in await orgs.list_orgs(request.app.state.redis)}
    admin = checks.is_admin(checks.principal(request))
    return await _page(request, "projects.html", homes=sorted(owned), admin=admin)


async def pipelines(request: Request) -> Response:
    project = request.path_params["project"]
    r = request.app.state.redis
    if not await records.project_exists(r, project):
        return await _missing(request, f"No project '{project}'.")
    found = await records.list_pipelines(r, project)
    latest = await run_lists.newest(r, project, [p.name for p in found])
    return await _page(
        request,
        "pipelines.html",
        project=project,
        pipelines=found,
        latest=latest,
        section="pipelines",
    )


async def editor(request: Request) -> Response:
    project = request.path_params["project"]
    name = request.path_params.get("name")
    source, version = DEFAULT_PIPELINE, None
    if name is not None:
        try:
            record = await records.get_pipeline(request.app.state.redis, project, name)
        except records.NotFound as exc:
            return await _missing(request, str(exc))
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
        return await _missing(request, str(exc))
    spec = records.validate_source(record.source, record.format).pipeline
    manual = spec.triggers.manual if spec else None
    form = (manual.form if manual else None) or {}
    history, more = await run_lists.page(r, project, [name], run_lists.Filters(), RUNS_PAGE)
    versions = sorted(await records.pipeline_versions(r, project, name), reverse=True)
    return await _page(
        request,
        "pipeline.html",
        project=project,
        pipeline=record,
        runs=history,
        more=more,
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
        return await _missing(request, f"'{name}' has no version {version}.")
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
    stored: store.StoredRun | None = request.state.run  # as authorized (services/web/authz.py)
    if stored is None and not await run_lists.was_asked(request.app.state.redis, run_id):
        return await _missing(request, f"No run '{run_id}'.")
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
    """The agents the caller may see; on a project, those assigned to it, and the Manage
    agents dialog with the agents the caller may manage."""
    project = request.path_params.get("project")
    if project is not None and not await records.project_exists(request.app.state.redis, project):
        return await _missing(request, f"No project '{project}'.")
    seen = await checks.readable_agents(request, await records.list_agents(request.app.state.redis))
    shown = [a.public() for a in seen if project is None or project in a.projects]
    everyone = [a.public() for a in seen if project and await checks.manageable(request, a.id)]
    return await _page(
        request, "agents.html", agents=shown, everyone=everyone, project=project, section="agents"
    )


async def agent_page(request: Request) -> Response:
    try:
        found = await records.get_agent(request.app.state.redis, request.path_params["agent"])
    except records.NotFound as exc:
        return await _missing(request, str(exc))
    return await _page(request, "agent.html", agent=found.public())


async def project_runs(request: Request) -> Response:
    """The newest runs of every pipeline of a project."""
    project = request.path_params["project"]
    r = request.app.state.redis
    if not await records.project_exists(r, project):
        return await _missing(request, f"No project '{project}'.")
    names = [p.name for p in await records.list_pipelines(r, project)]
    found, nxt = await run_lists.page(r, project, names, run_lists.Filters(), RUNS_PAGE)
    return await _page(
        request,
        "runs.html",
        project=project,
        runs=found,
        more=nxt,
        pipeline_names=names,
        section="runs",
    )


async def settings(request: Request) -> Response:
    """What the caller may manage: their API keys and organizations; for site admins
    every user, organization and key. Changes go through the API."""
    r, who = request.app.state.redis, checks.principal(request)
    admin = checks.is_admin(who)
    mine = await checks.visible_orgs(request)
    keys = (
        await apikeys.list_keys(r, None if admin else who["name"])
        if admin or orgs.is_user(who)
        else []
    )
    return await _page(
        request,
        "settings.html",
        admin=admin,
        users=await accounts.list_users(r) if admin else [],
        orgs=[o for o in await orgs.list_orgs(r) if mine is None or o["name"] in mine],
        keys=keys,
        audit=admin or bool(await checks.owned_orgs(request)),
    )


async def audit_page(request: Request) -> Response:
    """The audit log: all of it for site admins, their organizations' for owners."""
    owned = await checks.owned_orgs(request)
    found = await audit.entries(request.app.state.redis, 200, orgs=owned)
    return await _page(request, "audit.html", entries=found)


VIEWER, MAINTAINER = authz.project("viewer"), authz.project("maintainer")
OWNERS = authz.ORG_OWNER_SOMEWHERE

routes = [
    route("/login", login_page, PUBLIC),
    route("/login", login, PUBLIC, methods=["POST"]),
    route("/logout", logout, PUBLIC, methods=["POST"]),
    route("/", home, SIGNED_IN.but("the projects the caller has a role in")),
    route("/agents", agents, SIGNED_IN.but("the agents the caller may see")),
    route("/settings", settings, SIGNED_IN.but("the caller's keys and organizations")),
    route("/settings/audit", audit_page, OWNERS.but("the entries of the organizations they own")),
    route("/p/{project}", pipelines, VIEWER),
    route("/p/{project}/agents", agents, VIEWER),
    route("/p/{project}/runs", project_runs, VIEWER),
    route("/agents/{agent}", agent_page, authz.agent("see")),
    route("/p/{project}/pipelines/new", editor, MAINTAINER),
    route("/p/{project}/pipelines/{name}/edit", editor, MAINTAINER),
    route("/p/{project}/pipelines/{name}", pipeline, VIEWER),
    route("/p/{project}/pipelines/{name}/versions/{version:int}", version_page, VIEWER),
    route("/runs/{run}", run_page, authz.run("viewer", pending=True)),
    authz.GuardedMount(
        "/static", StaticFiles(directory=str(HERE / "static")), authz.PUBLIC, name="static"
    ),
]
