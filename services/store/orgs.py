"""Organizations and teams: an organization holds projects and members (with a role
in all its projects); a team of an organization holds members and a role in chosen
projects. Agents can be assigned to an organization, which assigns them to all its
projects. A user's role in a project is the strongest of what applies (`roles_in`).

Organizations do not leak into each other: a role of a user or key overall (other than
`admin`, the site admin) applies only to projects outside every organization; a
project of an organization is reached only through its members, its teams, or a role
given for that very project. Service keys are members of nothing."""

from __future__ import annotations

import time
from typing import Any

import orjson

from schemas.subjects import key
from services.store import slot_scripts
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
    """The project belongs to `org` from now on (and to no other organization)."""
    await require_org(r, org)
    before = await project_org(r, project)
    if before is not None and before != org:
        await r.srem(key("org", before, "projects"), project)
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


def is_user(principal: dict[str, str]) -> bool:
    """A user (signed in, or through a personal key), not a service key."""
    return principal.get("kind", "user") == "user"


async def roles_in(
    r: Redis, principal: dict[str, str], projects: list[str]
) -> dict[str, str | None]:
    """Each project's role for a user or key (None: no role there): the strongest of
    its own role for the project, its overall role (site admins everywhere, anyone
    else only outside organizations), its role in the project's organization and its
    teams' roles in the project."""
    if principal.get("role") == "admin":
        return dict.fromkeys(projects, "admin")
    own: dict[str, str] = orjson.loads(principal.get("roles") or "{}")
    async with r.pipeline(transaction=False) as p:
        for project in projects:
            p.hget(key("project", project), "org")
        homes: list[str | None] = [str(o) if o else None for o in await p.execute()]
    members: dict[str, str] = {}
    teams: dict[str, dict[str, str]] = {}  # org → project → strongest team role
    if is_user(principal):
        name = principal["name"]
        wanted = sorted({o for o in homes if o})
        async with r.pipeline(transaction=False) as p:
            for wanted_org in wanted:
                p.hget(key("org", wanted_org, "members"), name)
            members = {o: str(m) for o, m in zip(wanted, await p.execute(), strict=True) if m}
        for team in strs(await r.smembers(key("user", name, "teams"))):
            team_org, _, team_name = team.partition("/")
            for project, role in strdict(
                await r.hgetall(key("team", team_org, team_name, "projects"))
            ).items():
                mine = teams.setdefault(team_org, {})
                mine[project] = _strongest([mine.get(project, ""), role]) or ""
    found: dict[str, str | None] = {}
    for project, org in zip(projects, homes, strict=True):
        roles = [own.get(project, "")]
        if org is None:
            roles.append(principal.get("role", ""))
        else:
            roles += [members.get(org, ""), teams.get(org, {}).get(project, "")]
        found[project] = _strongest(roles)
    return found


async def user_role(r: Redis, user: dict[str, str], project: str) -> str | None:
    """The role of a user or key in one project (see `roles_in`)."""
    return (await roles_in(r, user, [project]))[project]


async def org_role(r: Redis, principal: dict[str, str], org: str) -> str | None:
    """A user's member role in an organization (teams give roles in projects, not in
    the organization); site admins are `admin` everywhere, service keys nothing."""
    if principal.get("role") == "admin":
        return "admin"
    if not is_user(principal):
        return None
    found = await r.hget(key("org", org, "members"), principal["name"])
    return str(found) if found else None


async def member_orgs(r: Redis, principal: dict[str, str]) -> set[str]:
    """The organizations a user belongs to, as a member or through a team."""
    if not is_user(principal):
        return set()
    name = principal["name"]
    found = {o for o in strs(await r.smembers(key("orgs"))) if await _is_member(r, o, name)}
    found |= {t.partition("/")[0] for t in strs(await r.smembers(key("user", name, "teams")))}
    return found


async def _is_member(r: Redis, org: str, user: str) -> bool:
    return bool(await r.hexists(key("org", org, "members"), user))


async def project_org(r: Redis, project: str) -> str | None:
    found = await r.hget(key("project", project), "org")
    return str(found) if found else None


async def org_exists(r: Redis, org: str) -> bool:
    return bool(await r.exists(key("org", org)))


async def forget_user(r: Redis, user: str) -> None:
    """Take a removed user out of every organization and team."""
    for org in strs(await r.smembers(key("orgs"))):
        await r.hdel(key("org", org, "members"), user)
    for team in strs(await r.smembers(key("user", user, "teams"))):
        team_org, _, name = team.partition("/")
        await r.srem(key("team", team_org, name, "members"), user)
    await r.delete(key("user", user, "teams"))


async def assign_agent_to_org(r: Redis, agent: str, org: str, on: bool = True) -> None:
    await require_org(r, org)
    if on:
        await r.sadd(agent_key(agent, "orgs"), org)
    else:
        await r.srem(agent_key(agent, "orgs"), org)
    await slot_scripts.reindex(r, agent)


async def org_projects(r: Redis, names: list[str]) -> set[str]:
    """Every project of these organizations (an agent assigned to them serves these)."""
    found: set[str] = set()
    for org in names:
        found |= set(strs(await r.smembers(key("org", org, "projects"))))
    return found
