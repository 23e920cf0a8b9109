"""The agents API: list, make, read, delete and assign agents; their heartbeat metrics
and when they were busy."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from schemas import subjects
from services.store import agent_use, orgs, records
from services.web import checks, lookup
from services.web.errors import ApiError, field, json_body, query_int


async def _shown(request: Request, agent: records.AgentRecord) -> dict[str, Any]:
    """The agent as the caller may see it: only the projects they have a role in."""
    shown = agent.public()
    if not checks.is_admin(checks.principal(request)):
        roles = await orgs.roles_in(
            lookup.redis_of(request), checks.principal(request), agent.projects
        )
        shown["projects"] = [p for p in agent.projects if roles[p]]
    return shown


async def list_agents(request: Request) -> JSONResponse:
    """The agents the caller may see (services/web/authz.py: `can_read_agent`)."""
    found = await checks.readable_agents(
        request, await records.list_agents(lookup.redis_of(request))
    )
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
    r = lookup.redis_of(request)
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
        return await records.get_agent(lookup.redis_of(request), request.path_params["agent"])
    except records.NotFound as exc:
        raise ApiError(404, str(exc)) from None


async def get_agent(request: Request) -> JSONResponse:
    return JSONResponse(await _shown(request, await _agent(request)))


async def agent_metrics(request: Request) -> JSONResponse:
    """The agent's heartbeat history, oldest first: [{at, cpu, mem}] (percent)."""
    agent = await _agent(request)
    raw = await lookup.redis_of(request).lrange(records.agent_key(agent.id, "metrics"), 0, -1)
    return JSONResponse([orjson.loads(x) for x in reversed(raw or [])])


async def delete_agent(request: Request) -> JSONResponse:
    agent = await _agent(request)
    await records.delete_agent(lookup.redis_of(request), agent.id)
    # the dispatcher cuts its connections off; its reconnects are refused from now on
    await lookup.nats_of(request).publish(subjects.AGENTS_REVOKED, agent.id.encode())
    await checks.note(request, "agent.delete", agent.id, projects=agent.projects, name=agent.name)
    return JSONResponse({"deleted": agent.id})


async def assign_agent(request: Request) -> JSONResponse:
    agent = await _agent(request)
    project = await lookup.project(request)
    on = request.method == "PUT"
    await records.assign_agent(lookup.redis_of(request), agent.id, project, on)
    what = "agent.assign" if on else "agent.unassign"
    await checks.note(request, what, agent.id, projects=[project, *agent.projects], project=project)
    return JSONResponse(await _shown(request, await _agent(request)))


async def agent_busy(request: Request) -> JSONResponse:
    """`{"slots": n, "since": t, "spans": [[start, end or null], ...]}`: the job
    attempts the agent ran in the last `hours` (default 24), for a chart of slots busy;
    only those of the projects the caller has a role in."""
    shown = await _shown(request, await _agent(request))
    hours = query_int(request, "hours", 24, low=1, high=24 * 14)
    since = time.time() - hours * 3600
    r = lookup.redis_of(request)
    pipelines = {p: [x.name for x in await records.list_pipelines(r, p)] for p in shown["projects"]}
    spans = await agent_use.busy(r, shown["id"], pipelines, since)
    return JSONResponse({"slots": shown.get("slots"), "since": since, "spans": spans})
