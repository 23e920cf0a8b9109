"""What a caller may do: the checks behind each need of a route's rule
(services/web/authz.py), run by the `Authorize` middleware before the handler; what
listings show each caller; and the audit note of a change.

A check raises `Refused`: 404 when what the route names does not exist (whoever asks),
403 with the role needed and the role held when it exists and the caller may not."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from services.store import apikeys, audit, orgs, records
from services.store import runs as store
from services.store.connection import Redis
from services.web.authz import Rule
from services.web.errors import ApiError, json_body

Principal = dict[str, str]


# --- who is asking ----------------------------------------------------------------------


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def principal(request: Request) -> Principal:
    found: Principal = request.state.key
    return found


def is_admin(who: Principal) -> bool:
    return who.get("role") == "admin"


def principal_id(who: Principal) -> str:
    """`user:<name>` for a user (signed in or through a personal key), `key:<id>`."""
    return f"user:{who['name']}" if orgs.is_user(who) else f"key:{who.get('id', '')}"


def who(who: Principal) -> str:
    """How the audit log names a caller."""
    if orgs.is_user(who):
        return who["name"] + (f" (key {who['key_id']})" if who.get("key_id") else "")
    return f"key {who.get('name', '')} ({who.get('id', '')})"


def _redis(request: Request) -> Redis:
    r: Redis = request.app.state.redis
    return r


def _what(request: Request) -> str:
    return f"{request.method} {request.url.path}"


# --- the checks ---------------------------------------------------------------------------


async def check(request: Request, rule: Rule) -> None:
    """Raise `Refused` unless the caller passes every need of `rule`."""
    for need in rule.needs:
        await CHECKS[need.on](request, principal(request), need.role)


async def _site(request: Request, who: Principal, role: str) -> None:
    if not is_admin(who):
        raise Refused(403, f"{_what(request)} needs a site admin")


async def _person(request: Request, who: Principal, role: str) -> None:
    if not (is_admin(who) or orgs.is_user(who)):
        raise Refused(403, f"{_what(request)} needs a user or a site admin, not a service key")


async def _some_org(request: Request, who: Principal, role: str) -> None:
    if not is_admin(who) and not await owned_orgs(request):
        raise Refused(403, f"{_what(request)} needs a site admin or an organization's {role}")


async def _require(
    request: Request,
    kind: str,
    name: str,
    need: str,
    exists: Callable[[Redis, str], Awaitable[bool]],
    role_of: Callable[[Redis, Principal, str], Awaitable[str | None]],
) -> None:
    """404 when the `kind` named `name` does not exist, 403 below `need` in it."""
    r = _redis(request)
    if not await exists(r, name):
        raise Refused(404, f"no {kind} '{name}'")
    have = await role_of(r, principal(request), name)
    if not records.role_at_least(have, need):
        raise Refused(
            403,
            f"{_what(request)} needs the role {need} in {kind} '{name}'; "
            f"you have {have or 'none there'}",
        )


async def require_project(request: Request, name: str, need: str) -> None:
    await _require(request, "project", name, need, records.project_exists, orgs.user_role)


async def _project(request: Request, who: Principal, role: str) -> None:
    await require_project(request, request.path_params["project"], role)


async def _pipeline(request: Request, who: Principal, role: str) -> None:
    """The run button: the pipeline's `triggers.manual.role`, default maintainer."""
    name = request.path_params["project"]
    if not await records.project_exists(_redis(request), name):
        raise Refused(404, f"no project '{name}'")
    try:
        found = await records.get_pipeline(_redis(request), name, request.path_params["name"])
    except records.NotFound as exc:
        raise Refused(404, str(exc)) from None
    spec = records.validate_source(found.source, found.format).pipeline
    manual = spec.triggers.manual if spec else None
    await require_project(request, name, (manual.role if manual else None) or "maintainer")


async def _run(request: Request, who: Principal, role: str, pending: bool = False) -> None:
    """The run's project; with `pending`, a run not made yet passes as `None` in
    `request.state.run` (the handler shows it waiting, and nothing of it)."""
    run_id = request.path_params["run"]
    stored = await store.load_run(_redis(request), run_id)
    request.state.run = stored
    if stored is None:
        if pending:
            return
        raise Refused(404, f"no run '{run_id}' (a run just started appears within moments)")
    await require_project(request, stored.fields["project"], role)


async def _run_or_pending(request: Request, who: Principal, role: str) -> None:
    await _run(request, who, role, pending=True)


@dataclass(frozen=True)
class AgentScope:
    """What an agent serves, and who made it."""

    id: str
    projects: list[str]
    orgs: list[str]
    created_by: str


async def agent_scope(r: Redis, agent_id: str) -> AgentScope | None:
    async with r.pipeline(transaction=False) as p:
        p.exists(records.agent_key(agent_id))
        p.hget(records.agent_key(agent_id), "created_by")
        p.smembers(records.agent_key(agent_id, "projects"))
        p.smembers(records.agent_key(agent_id, "orgs"))
        exists, made_by, projects, assigned = await p.execute()
    if not exists:
        return None
    return AgentScope(agent_id, sorted(projects), sorted(assigned), str(made_by or ""))


async def can_read_agent(request: Request, scope: AgentScope) -> bool:
    who, r = principal(request), _redis(request)
    if is_admin(who) or scope.created_by == principal_id(who):
        return True
    served = sorted(set(scope.projects) | await orgs.org_projects(r, scope.orgs))
    if any((await orgs.roles_in(r, who, served)).values()):
        return True
    return any([await orgs.org_role(r, who, o) for o in scope.orgs])


async def can_manage_agent(request: Request, scope: AgentScope) -> bool:
    who, r = principal(request), _redis(request)
    if is_admin(who):
        return True
    if not scope.projects and not scope.orgs:
        return scope.created_by == principal_id(who)
    roles = await orgs.roles_in(r, who, scope.projects)
    if not all(records.role_at_least(have, "maintainer") for have in roles.values()):
        return False
    return all([records.role_at_least(await orgs.org_role(r, who, o), "owner") for o in scope.orgs])


async def _agent(request: Request, who: Principal, role: str) -> None:
    agent_id = request.path_params["agent"]
    scope = await agent_scope(_redis(request), agent_id)
    if scope is None:
        raise Refused(404, f"no agent '{agent_id}'")
    manages = role == "manage"
    if not await (can_manage_agent if manages else can_read_agent)(request, scope):
        why = (
            "maintainer in every project it serves and owner of every organization it is "
            "assigned to"
            if manages
            else "a role in a project it serves"
        )
        raise Refused(403, f"{_what(request)} needs to {role} agent '{agent_id}': {why}")


async def require_org(request: Request, name: str, need: str) -> None:
    await _require(request, "organization", name, need, orgs.org_exists, orgs.org_role)


async def _org(request: Request, who: Principal, role: str) -> None:
    await require_org(request, request.path_params["org"], role)


async def _org_project(request: Request, who: Principal, role: str) -> None:
    """A team's role can only be given in a project of the team's organization."""
    name, home = request.path_params["project"], request.path_params["org"]
    if await orgs.project_org(_redis(request), name) != home:
        raise Refused(404, f"no project '{name}' in organization '{home}'")


async def _key(request: Request, who: Principal, role: str) -> None:
    key_id = request.path_params["key"]
    found = await apikeys.get_key(_redis(request), key_id)
    if found is None:
        raise Refused(404, f"no API key '{key_id}'")
    if is_admin(who) or (orgs.is_user(who) and found.get("user") == who["name"]):
        return
    raise Refused(403, f"{_what(request)} needs the key's user or a site admin")


async def _body(request: Request) -> dict[str, Any]:
    try:
        return await json_body(request)
    except ApiError as exc:
        raise Refused(exc.status, exc.message) from None


async def _body_projects(request: Request, who: Principal, role: str) -> None:
    named = (await _body(request)).get("projects") or []
    if not isinstance(named, list) or not all(isinstance(n, str) and n for n in named):
        raise Refused(422, "'projects' is a list of project names")
    if not named and not is_admin(who):
        raise Refused(403, f"{_what(request)} names no project: that needs a site admin")
    for name in named:
        await require_project(request, name, role)


async def _body_org(request: Request, who: Principal, role: str) -> None:
    named = (await _body(request)).get("org")
    if named is None:
        if not is_admin(who):
            raise Refused(403, f"{_what(request)} names no organization: that needs a site admin")
        return
    if not isinstance(named, str):
        raise Refused(422, "'org' is the name of an organization")
    await require_org(request, named, role)


CHECKS: dict[str, Callable[[Request, Principal, str], Awaitable[None]]] = {
    "site": _site,
    "person": _person,
    "some-org": _some_org,
    "project": _project,
    "pipeline": _pipeline,
    "run": _run,
    "run-or-pending": _run_or_pending,
    "agent": _agent,
    "org": _org,
    "org-project": _org_project,
    "key": _key,
    "body-projects": _body_projects,
    "body-org": _body_org,
}


# --- what a caller may see ------------------------------------------------------------------


async def visible_projects(request: Request) -> list[str]:
    r = _redis(request)
    roles = await orgs.roles_in(r, principal(request), await records.list_projects(r))
    return [name for name, role in roles.items() if role]


async def visible_orgs(request: Request) -> set[str] | None:
    """The organizations the caller belongs to (None: all, for a site admin)."""
    who = principal(request)
    return None if is_admin(who) else await orgs.member_orgs(_redis(request), who)


async def owned_orgs(request: Request) -> set[str] | None:
    """The organizations the caller owns (None: all, for a site admin)."""
    who, r = principal(request), _redis(request)
    if is_admin(who):
        return None
    mine = await orgs.member_orgs(r, who)
    return {o for o in mine if await orgs.org_role(r, who, o) == "owner"}


async def readable_agents(request: Request, found: list[records.AgentRecord]) -> list[Any]:
    if is_admin(principal(request)):
        return found
    r, shown = _redis(request), []
    for one in found:
        scope = await agent_scope(r, one.id)
        if scope is not None and await can_read_agent(request, scope):
            shown.append(one)
    return shown


async def manageable(request: Request, agent_id: str) -> bool:
    scope = await agent_scope(_redis(request), agent_id)
    return scope is not None and await can_manage_agent(request, scope)


# --- the audit log ------------------------------------------------------------------------


async def note(
    request: Request,
    what: str,
    target: str,
    projects: Sequence[str] = (),
    org_names: Sequence[str] = (),
    **detail: Any,
) -> None:
    """An audit entry for the caller's change; it concerns `org_names` and the
    organizations of `projects` (their owners read it)."""
    r = _redis(request)
    concerned = set(org_names)
    for name in projects:
        home = await orgs.project_org(r, name)
        if home:
            concerned.add(home)
    await audit.record(
        r,
        who(principal(request)),
        what,
        target,
        where=request.client.host if request.client else "",
        orgs=sorted(concerned),
        **detail,
    )
