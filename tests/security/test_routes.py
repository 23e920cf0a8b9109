"""Every route of the web service, walked as every role of two organizations (and a site
admin, a user with no role, personal and service keys) against the real stack, with
real HTTP requests; then the attacks of issue 12 one by one.

The walk is generated from the app's routes: a route without a rule, or with a rule the
walk cannot read, fails it. What each rule allows is read here from the rule's needs
against who the caller is in the fixture (`World`), independently of how the server
computes it; the table in docs/security.md must be the one `authz.table` renders."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.routing import BaseRoute, Route

from services.store import accounts
from services.store.connection import Redis, connect
from services.web import authz
from services.web.app import create_app
from services.web.ui import SESSION_COOKIE
from tests.conftest import ROOT
from tests.system.harness import System

PIPELINE = "name: Hello\njobs:\n  a:\n    steps:\n      - run: echo hi\n"
PASSWORD = "pw-123456789"
ROLES = ("viewer", "maintainer", "owner")
_names = itertools.count()

# below uvicorn's 5 s keep-alive: no request races the server closing an idle connection
KEEPALIVE = httpx.Limits(keepalive_expiry=2)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


@dataclass
class Caller:
    """Who calls, as the fixture made them: a member of `org` with `role`, a site admin,
    or a service key with per-project `roles`."""

    label: str
    client: httpx.AsyncClient
    name: str = ""
    org: str | None = None
    role: str | None = None
    admin: bool = False
    user: bool = True
    roles: dict[str, str] = field(default_factory=dict)
    session: bool = True  # signed in through a cookie (can see the UI's pages)

    def project_role(self, project: str, home: str) -> str | None:
        if self.admin:
            return "admin"
        found = [self.roles.get(project), self.role if self.org == home else None]
        known = [r for r in found if r]
        return max(known, key=ROLES.index) if known else None

    def org_role(self, org: str) -> str | None:
        return "admin" if self.admin else (self.role if self.org == org and self.user else None)


def at_least(have: str | None, need: str) -> bool:
    order = (*ROLES, "admin")
    return have in order and order.index(have) >= order.index(need)


@dataclass
class World:
    system: System
    r: Redis
    run: str = ""
    job: str = ""  # a job and step of the run (its logs, their SSE twin)
    step: str = ""
    agent: str = ""
    callers: list[Caller] = field(default_factory=list)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def user(self, name: str, role: str = "") -> None:
        body = {"name": name, "password": PASSWORD, **({"role": role} if role else {})}
        await self.system.call("POST", "/api/users", json=body)

    async def signed_in(self, name: str) -> httpx.AsyncClient:
        """A browser-like client with `name`'s session cookie and CSRF token."""
        token, session = await accounts.open_session(self.r, name)
        client = httpx.AsyncClient(
            base_url=self.system.url,
            cookies={SESSION_COOKIE: token},
            headers={"X-CSRF-Token": session.csrf},
            timeout=30,
            limits=KEEPALIVE,
        )
        self.clients.append(client)
        return client

    def bearer(self, token: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self.system.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            limits=KEEPALIVE,
        )
        self.clients.append(client)
        return client

    async def key(self, **body: Any) -> dict[str, Any]:
        made: dict[str, Any] = await self.system.call(
            "POST", "/api/keys", json={"name": unique("k"), **body}
        )
        return made

    async def fresh_agent(self) -> str:
        made = await self.system.call(
            "POST", "/api/agents", json={"name": unique("box"), "projects": ["victim"]}
        )
        return str(made["id"])

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


async def build(system: System) -> World:
    """org1 holds `victim` (a pipeline, a secret, a run, an agent); org2 holds `other`.
    One user per role in each organization, a site admin, a user with no role, a
    personal key of org1's maintainer and two service keys."""
    world = World(system, connect(system.stack.redis_url))
    for org, project in (("org1", "victim"), ("org2", "other")):
        await system.call("POST", "/api/orgs", json={"name": org})
        await system.call("POST", "/api/projects", json={"name": project, "org": org})
        await system.pipeline(project, PIPELINE)
    await system.call("PUT", "/api/projects/victim/secrets/TOKEN", json={"value": "s3cret"})
    agent = await system.agent("victim-box", projects=["victim"], start=False)
    world.agent = agent.id
    world.run = await system.start_run("victim", "Hello")
    await system.wait_for(lambda: _exists(system, world.run), 20, "the run")
    job = (await system.call("GET", f"/api/runs/{world.run}"))["jobs"][0]
    world.job, world.step = job["key"], job["steps"][0]["id"]
    await world.user("root", "admin")
    world.callers.append(Caller("site admin", await world.signed_in("root"), "root", admin=True))
    await world.user("nobody", "viewer")  # an overall role reaches no organization's project
    world.callers.append(Caller("no role", await world.signed_in("nobody"), "nobody"))
    for org in ("org1", "org2"):
        for role in ROLES:
            name = f"{org}-{role}"
            await world.user(name)
            await system.call("PUT", f"/api/orgs/{org}/members/{name}", json={"role": role})
            client = await world.signed_in(name)
            world.callers.append(Caller(name, client, name, org, role))
    personal = await world.key(user="org1-maintainer")
    world.callers.append(
        Caller(
            "org1-maintainer's key",
            world.bearer(personal["key"]),
            "org1-maintainer",
            "org1",
            "maintainer",
            session=False,
        )
    )
    service = await world.key(roles={"victim": "maintainer"})
    world.callers.append(
        Caller(
            "service key, maintainer in victim",
            world.bearer(service["key"]),
            user=False,
            roles={"victim": "maintainer"},
            session=False,
        )
    )
    wide = await world.key(role="owner")
    world.callers.append(
        Caller("service key, owner overall", world.bearer(wide["key"]), user=False, session=False)
    )
    return world


async def _exists(system: System, run_id: str) -> bool:
    return await system.run(run_id) is not None


@pytest.fixture
async def world(system: System) -> AsyncIterator[World]:
    found = await build(system)
    try:
        yield found
    finally:
        await found.close()
        await found.r.aclose()


# --- what each rule allows, read from its needs -------------------------------------------

KEY_HOLDER = "org1-viewer"  # whose key the key routes address


def expected(caller: Caller, rule: authz.Rule) -> bool:
    """Whether `rule` lets `caller` at org1's `victim` and everything of it."""
    return all(_passes(caller, need) for need in rule.needs)


def _passes(caller: Caller, need: authz.Need) -> bool:
    victim = caller.project_role("victim", "org1")
    match need.on:
        case "site":
            return caller.admin
        case "person":
            return caller.admin or caller.user
        case "some-org":
            return caller.admin or (caller.user and caller.role == need.role)
        case "project" | "run" | "run-or-pending" | "body-projects":
            return at_least(victim, need.role)
        case "pipeline":  # Hello's run button: the default, maintainer
            return at_least(victim, "maintainer")
        case "agent":  # the agent serves victim only; a site admin made it
            return at_least(victim, "viewer" if need.role == "see" else "maintainer")
        case "org" | "body-org":
            return at_least(caller.org_role("org1"), need.role)
        case "org-project":
            return True  # victim is org1's
        case "key":
            return caller.admin or (caller.user and caller.name == KEY_HOLDER)
    pytest.fail(f"the walk does not know the need {need}: teach `_passes` what it allows")


# --- how to call each route ---------------------------------------------------------------

Prepare = Callable[[World], Awaitable[dict[str, str]]]


async def _fresh_agent(world: World) -> dict[str, str]:
    return {"agent": await world.fresh_agent()}


async def _fresh_key(world: World) -> dict[str, str]:
    return {"key": str((await world.key(user=KEY_HOLDER))["id"])}


async def _no_params(world: World) -> dict[str, str]:
    return {}


BODIES: dict[tuple[str, str], Callable[[], Any]] = {
    ("POST", "/api/validate"): lambda: {"source": PIPELINE},
    ("POST", "/api/projects"): lambda: {"name": unique("p"), "org": "org1"},
    ("PUT", "/api/projects/{project}/webhook"): lambda: {},
    ("PUT", "/api/projects/{project}/secrets/{secret}"): lambda: {"value": "x"},
    ("POST", "/api/projects/{project}/pipelines"): lambda: {"source": PIPELINE},
    ("PUT", "/api/projects/{project}/pipelines/{name}"): lambda: {"source": PIPELINE},
    ("POST", "/api/projects/{project}/pipelines/{name}/runs"): lambda: {},
    ("POST", "/api/agents"): lambda: {"name": unique("made"), "projects": ["victim"]},
    ("POST", "/api/keys"): lambda: {"name": unique("mine")},
    ("POST", "/api/users"): lambda: {"name": unique("u"), "password": PASSWORD},
    ("POST", "/api/orgs"): lambda: {"name": unique("o")},
    ("PUT", "/api/orgs/{org}/members/{user}"): lambda: {"role": "viewer"},
    ("PUT", "/api/orgs/{org}/teams/{team}/projects/{project}"): lambda: {"role": "viewer"},
}
# Routes whose calls change what later calls need get a fresh target each time.
PREPARE: dict[tuple[str, str], Prepare] = {
    ("DELETE", "/api/agents/{agent}"): _fresh_agent,
    ("PUT", "/api/agents/{agent}/projects/{project}"): _fresh_agent,
    ("DELETE", "/api/agents/{agent}/projects/{project}"): _fresh_agent,
    ("PUT", "/api/orgs/{org}/agents/{agent}"): _fresh_agent,
    ("DELETE", "/api/orgs/{org}/agents/{agent}"): _fresh_agent,
    ("DELETE", "/api/keys/{key}"): _fresh_key,
    ("DELETE", "/api/projects/{project}/pipelines/{name}"): (
        lambda world: _constant({"name": "Doomed"})  # 404 once allowed: Hello stays
    ),
    ("DELETE", "/api/users/{user}"): lambda world: _constant({"user": "ghost"}),
}


async def _constant(params: dict[str, str]) -> dict[str, str]:
    return params


def params_of(world: World) -> dict[str, str]:
    return {
        "project": "victim",
        "name": "Hello",
        "secret": "TOKEN",
        "run": world.run,
        "job": world.job,
        "step": world.step,
        "artifact": "art",
        "path": "f.txt",
        "agent": world.agent,
        "org": "org1",
        "user": "target-user",
        "team": "t1",
        "key": "0" * 16,
        "version": "1",
    }


def fill(path: str, params: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: params[m.group(1)], path)


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    rule: authz.Rule | None


def cases(routes: list[BaseRoute]) -> list[Case]:
    found = []
    for route in routes:
        methods = sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"})
        path = getattr(route, "path", "")
        for method in methods:
            found.append(Case(method, path, authz.rule_of(route)))
    return found


async def call(world: World, caller: Caller | None, case: Case) -> httpx.Response:
    prepare = PREPARE.get((case.method, case.path), _no_params)
    params = {**params_of(world), **await prepare(world)}
    path = fill(case.path, params)
    if path.endswith("/…"):
        path = "/static/app.css"
    body = BODIES.get((case.method, case.path))
    client = caller.client if caller else httpx.AsyncClient(base_url=world.system.url)
    try:
        request = client.build_request(case.method, path, json=body() if body else None)
        # streamed and closed unread: an allowed SSE stream would never end
        response = await client.send(request, stream=True, follow_redirects=False)
        await response.aclose()
        return response
    finally:
        if caller is None:
            await client.aclose()


def _first(pair: tuple[bool, Caller]) -> bool:
    return pair[0]


def allowed_status(response: httpx.Response) -> bool:
    to_login = response.status_code == 303 and "/login" in response.headers.get("location", "")
    return response.status_code not in (401, 403) and response.status_code < 500 and not to_login


async def test_every_route_as_every_role_of_two_organizations(world: World) -> None:
    app = create_app("nats://127.0.0.1:1", "redis://127.0.0.1:1")  # only its routes
    walked = cases(list(app.routes))
    assert not [c for c in walked if c.rule is None], "routes without a rule"
    wrong: list[str] = []
    for case in walked:
        assert case.rule is not None
        if case.rule.public:
            response = await call(world, None, case)
            if response.status_code == 403 or response.status_code >= 500:
                wrong.append(f"{case.method} {case.path} anonymous: {response.status_code}")
            continue
        api = case.path.startswith("/api/")
        callers = [c for c in world.callers if api or c.session]
        # refusals first: an allowed call may change what a later one finds
        for want, caller in sorted(((expected(c, case.rule), c) for c in callers), key=_first):
            response = await call(world, caller, case)
            ok = allowed_status(response) if want else response.status_code == 403
            if not ok:
                verdict = "allowed" if want else "refused"
                wrong.append(
                    f"{case.method} {case.path} as {caller.label}: want {verdict}, "
                    f"got {response.status_code}"
                )
    assert not wrong, "\n".join(wrong)


def test_the_docs_table_is_the_routes_rules() -> None:
    app = create_app("nats://127.0.0.1:1", "redis://127.0.0.1:1")
    docs = (ROOT / "docs" / "security.md").read_text()
    assert authz.table(app.routes) in docs, (
        "docs/security.md's route table differs from the routes' rules; paste "
        "`python -c 'from services.web.app import create_app; from services.web import "
        'authz; print(authz.table(create_app("nats://x", "redis://x").routes))\'`'
    )


async def test_a_route_without_a_rule_is_refused() -> None:
    app = create_app("nats://127.0.0.1:1", "redis://127.0.0.1:1")

    async def leak(request: Any) -> Any:
        raise AssertionError("the handler of a route without a rule ran")

    app.router.routes.append(Route("/unruled", leak))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
        response = await client.get("/unruled")
    assert response.status_code == 403
    assert "no authorization rule" in response.text


# --- the attacks of issue 12, one by one -------------------------------------------------


def caller(world: World, label: str) -> httpx.AsyncClient:
    return next(c.client for c in world.callers if c.label == label)


async def test_an_org2_viewer_cannot_take_org1s_agents_or_jobs(world: World) -> None:
    system = world.system
    for label in ("org2-viewer", "org2-owner"):
        attacker = caller(world, label)
        made = await attacker.post("/api/agents", json={"name": "evil", "projects": ["victim"]})
        assert made.status_code == 403, made.text
        unassigned = await attacker.delete(f"/api/agents/{world.agent}/projects/victim")
        assert unassigned.status_code == 403, unassigned.text
        deleted = await attacker.delete(f"/api/agents/{world.agent}")
        assert deleted.status_code == 403, deleted.text
        org_wide = await attacker.put(f"/api/orgs/org2/agents/{world.agent}")
        assert org_wide.status_code == 403, org_wide.text
    agent = await system.call("GET", f"/api/agents/{world.agent}")
    assert agent["projects"] == ["victim"]
    # org2's owner makes an agent for org2 and cannot point it at org1's project
    owner = caller(world, "org2-owner")
    mine = await owner.post("/api/agents", json={"name": "mine", "projects": ["other"]})
    assert mine.status_code == 201, mine.text
    hijack = await owner.put(f"/api/agents/{mine.json()['id']}/projects/victim")
    assert hijack.status_code == 403, hijack.text
    # nor move org1's project into org2, nor give an org2 team a role in it
    moved = await owner.put("/api/orgs/org2/projects/victim")
    assert moved.status_code == 403, moved.text
    await owner.put("/api/orgs/org2/teams/t")
    team = await owner.put("/api/orgs/org2/teams/t/projects/victim", json={"role": "owner"})
    assert team.status_code == 404, team.text
    # an agent for no project, a viewer's key, a project outside an organization: refused
    viewer_key = await world.key(user="org1-viewer")
    keyed = world.bearer(viewer_key["key"])
    made = await keyed.post("/api/agents", json={"name": "x", "projects": ["victim"]})
    assert made.status_code == 403, made.text
    loose = await owner.post("/api/agents", json={"name": "loose"})
    assert loose.status_code == 403, loose.text
    for label in ("org1-viewer", "org2-owner", "no role"):
        project = await caller(world, label).post("/api/projects", json={"name": "grab"})
        assert project.status_code == 403, project.text
    into = await caller(world, "org2-owner").post(
        "/api/projects", json={"name": "grab", "org": "org1"}
    )
    assert into.status_code == 403, into.text
    ok = await caller(world, "org1-owner").post(
        "/api/projects", json={"name": "fresh", "org": "org1"}
    )
    assert ok.status_code == 201, ok.text


async def test_nothing_of_org1_is_readable_from_org2(world: World) -> None:
    run, step = world.run, f"/api/runs/{world.run}/jobs/{world.job}/steps/{world.step}"
    for label in ("org2-owner", "no role", "service key, owner overall"):
        who = next(c for c in world.callers if c.label == label)
        for path in (
            f"/api/runs/{run}",
            f"{step}/logs",
            f"{step}/logs/events",
            f"/api/runs/{run}/artifacts",
            f"/api/runs/{run}/artifacts/a/art/f.txt",
            "/api/projects/victim/pipelines",
            "/api/projects/victim/pipelines/Hello",
            "/api/projects/victim/pipelines/Hello/versions",
            "/api/projects/victim/pipelines/Hello/runs",
            "/api/projects/victim/secrets",
            "/api/projects/victim/webhook",
            f"/api/agents/{world.agent}",
            f"/api/agents/{world.agent}/metrics",
        ):
            response = await who.client.get(path)
            assert response.status_code == 403, f"{label} {path}: {response.text}"
        assert "victim" not in [p["name"] for p in (await who.client.get("/api/projects")).json()]
        assert world.agent not in [a["id"] for a in (await who.client.get("/api/agents")).json()]
        orgs = (await who.client.get("/api/orgs")).json()
        assert "org1" not in [o["name"] for o in orgs]
        if who.session:
            for page in ("/p/victim", f"/runs/{run}", f"/agents/{world.agent}"):
                assert (await who.client.get(page)).status_code == 403, page
            assert "victim" not in (await who.client.get("/")).text
    # an overall role reaches projects outside every organization, and only those
    await world.system.project("loose")
    wide = next(c for c in world.callers if c.label == "service key, owner overall")
    assert (await wide.client.get("/api/projects")).json() == [{"name": "loose"}]
    assert (await wide.client.put("/api/projects/loose/secrets/S", json={"value": "x"})).is_success
    mine = await caller(world, "org2-viewer").get("/api/orgs")
    assert [o["name"] for o in mine.json()] == ["org2"]
    users = (await caller(world, "org2-viewer").get("/api/users")).json()
    assert {u["name"] for u in users} == {"org2-viewer", "org2-maintainer", "org2-owner"}
    member = await caller(world, "org1-viewer").get(f"/api/runs/{run}")
    assert member.status_code == 200


async def test_a_new_user_has_no_role_anywhere(world: World) -> None:
    await world.user("newcomer")
    client = await world.signed_in("newcomer")
    assert (await client.get("/api/projects")).json() == []
    assert (await client.get("/api/projects/victim/pipelines")).status_code == 403
    assert (await client.get("/api/whoami")).json()["role"] is None


async def _refused_within(client: httpx.AsyncClient, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if (await client.get("/api/whoami")).status_code == 401:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"still accepted after {seconds} s")


async def test_keys_are_listed_revoked_and_expire(world: World) -> None:
    system = world.system
    made = await caller(world, "org1-owner").post("/api/keys", json={"name": "laptop"})
    assert made.status_code == 201, made.text
    token, key_id = made.json()["key"], made.json()["id"]
    keyed = world.bearer(token)
    assert (await keyed.get("/api/whoami")).json()["name"] == "org1-owner"
    assert (await keyed.get("/api/projects/victim/secrets")).status_code == 200  # cached now
    listed = (await caller(world, "org1-owner").get("/api/keys")).json()
    mine = next(k for k in listed if k["id"] == key_id)
    assert mine["user"] == "org1-owner" and mine["last_used"] is not None
    assert "key" not in mine and all("ryk_" not in str(v) for v in mine.values())
    assert key_id in [k["id"] for k in await system.call("GET", "/api/keys")]
    assert key_id not in [
        k["id"] for k in (await caller(world, "org2-owner").get("/api/keys")).json()
    ]
    # only its user or a site admin revokes it
    other = await caller(world, "org2-owner").delete(f"/api/keys/{key_id}")
    assert other.status_code == 403
    gone = await caller(world, "org1-owner").delete(f"/api/keys/{key_id}")
    assert gone.status_code == 200, gone.text
    assert await _refused_within(keyed, 6.0) <= 6.0
    # a personal key cannot be given roles of its own; a service key cannot make keys
    roles = await caller(world, "org1-owner").post("/api/keys", json={"name": "x", "role": "admin"})
    assert roles.status_code == 422
    service = next(c for c in world.callers if c.label.startswith("service key, maint"))
    assert (await service.client.post("/api/keys", json={"name": "x"})).status_code == 403
    # an expired key is refused at once, even while remembered
    short = await caller(world, "org1-owner").post(
        "/api/keys", json={"name": "brief", "expires_in_days": 1.5 / 86400}
    )
    brief = world.bearer(short.json()["key"])
    assert (await brief.get("/api/whoami")).status_code == 200
    await asyncio.sleep(1.6)
    assert (await brief.get("/api/whoami")).status_code == 401
    listed = (await caller(world, "org1-owner").get("/api/keys")).json()
    assert next(k for k in listed if k["name"] == "brief")["expired"] is True


async def test_a_removed_users_sessions_and_keys_stop_working(world: World) -> None:
    system = world.system
    await world.user("leaver")
    await system.call("PUT", "/api/orgs/org1/members/leaver", json={"role": "owner"})
    session = await world.signed_in("leaver")
    keyed = world.bearer((await world.key(user="leaver"))["key"])
    assert (await session.get("/api/projects/victim/secrets")).status_code == 200
    assert (await keyed.get("/api/projects/victim/secrets")).status_code == 200
    assert (await session.get("/p/victim")).status_code == 200
    refused = await caller(world, "org1-owner").delete("/api/users/leaver")
    assert refused.status_code == 403  # removing users: site admins
    removed = await system.call("DELETE", "/api/users/leaver")
    assert len(removed["keys_revoked"]) == 1
    assert (await session.get("/api/whoami")).status_code == 401
    page = await session.get("/p/victim", follow_redirects=False)
    assert page.status_code == 303 and "/login" in page.headers["location"]
    assert await _refused_within(keyed, 6.0) <= 6.0
    orgs = await system.call("GET", "/api/orgs")
    assert "leaver" not in next(o for o in orgs if o["name"] == "org1")["members"]
    # made again under the same name: the old session and key stay dead
    await world.user("leaver")
    assert (await session.get("/api/whoami")).status_code == 401
    assert (await keyed.get("/api/whoami")).status_code == 401


async def test_security_changes_are_in_the_audit_log(world: World) -> None:
    owner = caller(world, "org1-owner")
    await owner.put("/api/projects/victim/secrets/API", json={"value": "x"})
    await owner.put("/api/orgs/org1/members/target-user", json={"role": "maintainer"})
    entries = (await owner.get("/api/audit")).json()
    what = [(e["what"], e["target"]) for e in entries]
    assert ("secret.set", "victim/API") in what
    assert ("org.member", "target-user") in what
    assert all("org1" in e["orgs"] for e in entries)  # org1's owner reads org1's entries
    first = next(e for e in entries if e["what"] == "org.member")
    assert first["who"] == "org1-owner" and first["where"] and first["at"] > 0
    assert first["detail"] == {"role": "maintainer"}
    everything = await world.system.call("GET", "/api/audit?limit=500")
    done = {e["what"] for e in everything}
    assert {"org.create", "project.create", "user.create", "key.create", "agent.create"} <= done
    assert "org2" in {o for e in everything for o in e["orgs"]}
    assert not {o for e in entries for o in e["orgs"]} - {"org1"}
    assert (await caller(world, "org2-viewer").get("/api/audit")).status_code == 403
    page = await owner.get("/settings/audit")
    assert page.status_code == 200 and "secret.set" in page.text and "victim/API" in page.text
    assert (await caller(world, "org1-viewer").get("/settings/audit")).status_code == 403
