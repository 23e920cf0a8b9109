"""Who may act: API keys (list, make, revoke), users (list, make, remove),
organizations and teams, and the audit log of these changes. Each route's rule is in
its declaration (services/web/authz.py); handlers show only what the caller may see."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from services.store import accounts, apikeys, audit, orgs, records
from services.store.connection import Redis
from services.web import authz, checks
from services.web.authz import ADMIN, PERSON, SIGNED_IN, key_holder, org, route
from services.web.errors import ApiError, field, json_body

# Roles inside a project, organization or team; `admin` is only ever overall.
PROJECT_ROLES = ("viewer", "maintainer", "owner")


def redis_of(request: Request) -> Redis:
    r: Redis = request.app.state.redis
    return r


def _role(body: dict[str, Any], default: str | None = "viewer") -> str | None:
    role = body.get("role", default)
    if role is not None and role not in PROJECT_ROLES:
        raise ApiError(422, f"a role here is one of {', '.join(PROJECT_ROLES)}")
    return role


def _overall(body: dict[str, Any], default: str) -> str:
    role = str(field(body, "role", str, default))
    if role and role not in records.ROLES:
        raise ApiError(422, f"a role is one of {', '.join(records.ROLES)}")
    return role


def _project_roles(body: dict[str, Any]) -> dict[str, str]:
    roles: dict[str, str] = field(body, "roles", dict, {})
    if any(r not in PROJECT_ROLES for r in roles.values()):
        raise ApiError(422, f"a project's role is one of {', '.join(PROJECT_ROLES)}")
    return roles


async def whoami(request: Request) -> JSONResponse:
    who = checks.principal(request)
    return JSONResponse(
        {
            "name": who.get("name"),
            "kind": who.get("kind", "user"),
            "role": who.get("role") or None,
            "roles": orjson.loads(who.get("roles") or "{}"),
            "orgs": sorted(await orgs.member_orgs(redis_of(request), who)),
        }
    )


# --- API keys -------------------------------------------------------------------------


async def list_keys(request: Request) -> JSONResponse:
    """Every key for a site admin; a user's own personal keys otherwise."""
    who = checks.principal(request)
    mine = None if checks.is_admin(who) else who["name"]
    return JSONResponse(await apikeys.list_keys(redis_of(request), mine))


async def create_key(request: Request) -> JSONResponse:
    """A new key, shown once. A user makes personal keys (the user's own roles); a site
    admin also makes service keys (`role` overall, `roles` per project) and personal
    keys for any `user`. `expires_in_days` makes it stop working after that long."""
    who, r = checks.principal(request), redis_of(request)
    body = await json_body(request)
    name = field(body, "name", str)
    days = body.get("expires_in_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)):
        raise ApiError(422, "'expires_in_days' must be a number")
    if days is not None and days <= 0:
        raise ApiError(422, "'expires_in_days' must be more than 0")
    holder: dict[str, str] | None = None
    if "user" in body or not checks.is_admin(who):
        if "role" in body or "roles" in body:
            raise ApiError(422, "a personal key has its user's roles; give the user roles instead")
        owner = field(body, "user", str) if "user" in body else who["name"]
        holder = await accounts.get_user(r, owner)
        if holder is None:
            raise ApiError(404, f"no user '{owner}'")
        if owner != who.get("name") and not checks.is_admin(who):
            raise ApiError(403, "only a site admin makes keys for another user")
        role, roles = "", {}
    else:
        role = _overall(body, "" if "roles" in body else "viewer")
        roles = _project_roles(body)
    token = await records.create_api_key(
        r,
        name,
        role,
        roles,
        user=holder,
        expires_at=apikeys.expires_at(days),
        created_by=checks.principal_id(who),
    )
    made = records.key_id(records.hash_secret(token))
    user = holder["name"] if holder else None
    await checks.note(request, "key.create", made, name=name, user=user, role=role, roles=roles)
    return JSONResponse({"id": made, "name": name, "key": token}, status_code=201)


async def revoke_key(request: Request) -> JSONResponse:
    key_id = request.path_params["key"]
    gone = await apikeys.revoke(redis_of(request), key_id)
    if gone is None:
        raise ApiError(404, f"no API key '{key_id}'")
    await checks.note(request, "key.revoke", key_id, name=gone.get("name"), user=gone.get("user"))
    return JSONResponse({"revoked": key_id})


# --- users ----------------------------------------------------------------------------


async def create_user(request: Request) -> JSONResponse:
    body = await json_body(request)
    name, password = field(body, "name", str), field(body, "password", str)
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise ApiError(422, "a user name is 1-64 letters, digits, '-' or '_'")
    if len(password) < 8:
        raise ApiError(422, "a password needs at least 8 characters")
    role, roles = _overall(body, ""), _project_roles(body)
    if not await accounts.create_user(redis_of(request), name, password, role, roles):
        raise ApiError(409, f"user '{name}' exists already")
    await checks.note(request, "user.create", name, role=role, roles=roles)
    return JSONResponse({"name": name}, status_code=201)


async def list_users(request: Request) -> JSONResponse:
    """Every user for a site admin; otherwise the names of the users who share an
    organization with the caller."""
    found = await accounts.list_users(redis_of(request))
    mine = await checks.visible_orgs(request)
    if mine is None:
        return JSONResponse(found)
    r, shown = redis_of(request), []
    who = checks.principal(request)
    for user in found:
        theirs = await orgs.member_orgs(r, {**user, "kind": "user"})
        if (orgs.is_user(who) and user["name"] == who["name"]) or theirs & mine:
            shown.append({"name": user["name"]})
    return JSONResponse(shown)


async def remove_user(request: Request) -> JSONResponse:
    """The user, their memberships and personal keys go; their sessions end at once,
    their keys within the web service's key cache (seconds)."""
    name, who = request.path_params["user"], checks.principal(request)
    if orgs.is_user(who) and name == who["name"]:
        raise ApiError(409, "you cannot remove yourself; another site admin can")
    keys = await accounts.remove_user(redis_of(request), name)
    if keys is None:
        raise ApiError(404, f"no user '{name}'")
    await checks.note(request, "user.remove", name, keys=keys)
    return JSONResponse({"removed": name, "keys_revoked": keys})


# --- organizations and teams ----------------------------------------------------------


async def list_orgs(request: Request) -> JSONResponse:
    mine = await checks.visible_orgs(request)
    found = await orgs.list_orgs(redis_of(request))
    return JSONResponse([o for o in found if mine is None or o["name"] in mine])


async def create_org(request: Request) -> JSONResponse:
    name = field(await json_body(request), "name", str)
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise ApiError(422, "an organization name is 1-64 letters, digits, '-' or '_'")
    if not await orgs.create_org(redis_of(request), name):
        raise ApiError(409, f"organization '{name}' exists already")
    await checks.note(request, "org.create", name, org_names=[name])
    return JSONResponse({"name": name}, status_code=201)


async def org_change(request: Request) -> JSONResponse:
    """PUT/DELETE members, projects, teams, team members and team projects."""
    r, p = redis_of(request), request.path_params
    on = request.method == "PUT"
    body = await json_body(request) if on and await request.body() else {}
    home = p["org"]
    detail: dict[str, Any]
    try:
        if "team" in p and "user" in p:
            await orgs.set_team_member(r, home, p["team"], p["user"], on)
            what, target, detail = "team.member", f"{p['team']}/{p['user']}", {}
        elif "team" in p and "project" in p:
            role = _role(body) if on else None
            await orgs.set_team_project(r, home, p["team"], p["project"], role)
            what, target, detail = "team.project", f"{p['team']}/{p['project']}", {"role": role}
        elif "team" in p:
            await orgs.create_team(r, home, p["team"])
            what, target, detail = "team.create", p["team"], {}
        elif "user" in p:
            role = _role(body) if on else None
            await orgs.set_member(r, home, p["user"], role)
            what, target, detail = "org.member", p["user"], {"role": role}
        elif "project" in p:
            before = await orgs.project_org(r, p["project"])
            await orgs.add_project(r, home, p["project"])
            what, target, detail = "org.project", p["project"], {"from": before}
        else:
            await orgs.assign_agent_to_org(r, p["agent"], home, on)
            what, target, detail = "org.agent", p["agent"], {"on": on}
    except records.NotFound as exc:
        raise ApiError(404, str(exc)) from None
    if not on:
        what += ".remove"
    await checks.note(request, what, target, org_names=[home], **detail)
    return JSONResponse({"ok": True})


# --- the audit log --------------------------------------------------------------------


async def audit_log(request: Request) -> JSONResponse:
    """Newest first: all of it for a site admin, an owner's organizations' otherwise.
    `?limit=` (at most 1000) and `?before=<entry id>` page back."""
    try:
        limit = max(1, min(int(request.query_params.get("limit", "100")), 1000))
    except ValueError:
        raise ApiError(400, "'limit' must be a whole number") from None
    before = request.query_params.get("before")
    if before is not None and not before.replace("-", "").isdigit():
        raise ApiError(400, "'before' must be an entry id such as 1700000000000-0")
    owned = await checks.owned_orgs(request)
    return JSONResponse(await audit.entries(redis_of(request), limit, before, owned))


OWNER = org("owner")

routes = [
    route("/api/whoami", whoami, SIGNED_IN),
    route("/api/keys", list_keys, PERSON.but("a site admin sees every key, a user theirs")),
    route("/api/keys", create_key, PERSON.but("a user's own key; roles: site admin"), ["POST"]),
    route("/api/keys/{key}", revoke_key, key_holder(), ["DELETE"]),
    route("/api/users", list_users, SIGNED_IN.but("a site admin sees all; others share an org")),
    route("/api/users", create_user, ADMIN, ["POST"]),
    route("/api/users/{user}", remove_user, ADMIN, ["DELETE"]),
    route("/api/orgs", list_orgs, SIGNED_IN.but("the organizations the caller belongs to")),
    route("/api/orgs", create_org, ADMIN, ["POST"]),
    route("/api/orgs/{org}/members/{user}", org_change, OWNER, ["PUT", "DELETE"]),
    route(
        "/api/orgs/{org}/projects/{project}",
        org_change,
        OWNER & authz.project("owner"),
        ["PUT"],
    ),
    route(
        "/api/orgs/{org}/agents/{agent}",
        org_change,
        OWNER & authz.agent("manage"),
        ["PUT", "DELETE"],
    ),
    route("/api/orgs/{org}/teams/{team}", org_change, OWNER, ["PUT"]),
    route("/api/orgs/{org}/teams/{team}/members/{user}", org_change, OWNER, ["PUT", "DELETE"]),
    route(
        "/api/orgs/{org}/teams/{team}/projects/{project}",
        org_change,
        OWNER & authz.org_project(),
        ["PUT", "DELETE"],
    ),
    route(
        "/api/audit",
        audit_log,
        authz.ORG_OWNER_SOMEWHERE.but("a site admin reads all, an owner their organizations'"),
    ),
]
