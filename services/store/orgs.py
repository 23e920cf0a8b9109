"""Organizations and teams: an organization holds projects and members (with a role
in all its projects); a team of an organization holds members and a role in chosen
projects. Agents can be assigned to an organization, which assigns them to all its
projects. A user's role in a project is the strongest of what applies."""

from __future__ import annotations

import time
from typing import Any

import orjson

from schemas.subjects import key
from services.store.connection import Redis, strdict, strs
from services.store.records import ROLES, NotFound, agent_key


def _strongest(roles: list[str]) -> str | None:
    known = [r for r in roles if r in ROLES]
    return max(known, key=ROLES.index) if known else None


async def create_org(r: Redis, name: str) -> bool:
    created = await r.hsetnx(key("org", name), "created_at", str(time.time()))
    if created:
        await r.sadd(key("orgs"), name)
    return bool(created)


async def require_org(r: Redis, org: str) -> None:
    if not await r.exists(key("org", org)):
        raise NotFound(f"no organization '{org}'")


async def list_orgs(r: Redis) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for org in sorted(strs(await r.smembers(key("orgs")))):
        found.append(
            {
                "name": org,
                "members": strdict(await r.hgetall(key("org", org, "members"))),
                "projects": sorted(strs(await r.smembers(key("org", org, "projects")))),
                "teams": sorted(strs(await r.smembers(key("org", org, "teams")))),
            }
        )
    return found


async def set_member(r: Redis, org: str, user: str, role: str | None) -> None:
    await require_org(r, org)
    if role is None:
        await r.hdel(key("org", org, "members"), user)
    else:
        await r.hset(key("org", org, "members"), user, role)


async def add_project(r: Redis, org: str, project: str) -> None:
    await require_org(r, org)
    await r.sadd(key("org", org, "projects"), project)
    await r.hset(key("project", project), "org", org)


async def create_team(r: Redis, org: str, team: str) -> None:
    await require_org(r, org)
    await r.sadd(key("org", org, "teams"), team)


async def set_team_member(r: Redis, org: str, team: str, user: str, on: bool) -> None:
    if not await r.sismember(key("org", org, "teams"), team):
        raise NotFound(f"no team '{team}' in '{org}'")
    if on:
        await r.sadd(key("team", org, team, "members"), user)
        await r.sadd(key("user", user, "teams"), f"{org}/{team}")
    else:
        await r.srem(key("team", org, team, "members"), user)
        await r.srem(key("user", user, "teams"), f"{org}/{team}")


async def set_team_project(r: Redis, org: str, team: str, project: str, role: str | None) -> None:
    if not await r.sismember(key("org", org, "teams"), team):
        raise NotFound(f"no team '{team}' in '{org}'")
    if role is None:
        await r.hdel(key("team", org, team, "projects"), project)
    else:
        await r.hset(key("team", org, team, "projects"), project, role)


async def user_role(r: Redis, user: dict[str, str], project: str) -> str:
    """The strongest of: the user's own role (overall or for the project), their role
    in the project's organization, and the roles of their teams in the project."""
    own: dict[str, str] = orjson.loads(user.get("roles") or "{}")
    roles = [user.get("role", "viewer"), own.get(project, "")]
    org = await r.hget(key("project", project), "org")
    if org:
        roles.append(str(await r.hget(key("org", str(org), "members"), user["name"]) or ""))
    for team in strs(await r.smembers(key("user", user["name"], "teams"))):
        team_org, _, name = team.partition("/")
        roles.append(str(await r.hget(key("team", team_org, name, "projects"), project) or ""))
    return _strongest(roles) or "viewer"


async def assign_agent_to_org(r: Redis, agent: str, org: str, on: bool = True) -> None:
    await require_org(r, org)
    if on:
        await r.sadd(agent_key(agent, "orgs"), org)
    else:
        await r.srem(agent_key(agent, "orgs"), org)


async def org_projects(r: Redis, names: list[str]) -> set[str]:
    """Every project of these organizations (an agent assigned to them serves these)."""
    found: set[str] = set()
    for org in names:
        found |= set(strs(await r.smembers(key("org", org, "projects"))))
    return found
