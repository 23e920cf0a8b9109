"""Organizations and teams: roles through them, sessions with CSRF, and agents assigned
to an organization taking its projects' jobs."""

from __future__ import annotations

import re

import httpx

from services.store import orgs
from services.store.connection import connect
from tests.system.harness import System

PIPELINE = "name: Hello\njobs:\n  a:\n    steps:\n      - run: echo hi\n"


async def session(system: System, user: str, password: str) -> tuple[httpx.AsyncClient, str]:
    """A browser-like client logged in as `user`, and its CSRF token."""
    client = httpx.AsyncClient(base_url=system.url, timeout=30)
    response = await client.post("/login", data={"username": user, "password": password})
    assert response.status_code == 303, response.text
    page = await client.get("/")
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match is not None
    return client, match.group(1)


async def test_roles_through_organizations_and_teams(system: System) -> None:
    await system.project("vision")
    await system.pipeline("vision", PIPELINE)
    for name in ("bob", "carol", "dave"):
        await system.call("POST", "/api/users", json={"name": name, "password": f"{name}-pw-123"})
    await system.call("POST", "/api/orgs", json={"name": "acme"})
    await system.call("PUT", "/api/orgs/acme/projects/vision")
    await system.call("PUT", "/api/orgs/acme/members/bob", json={"role": "maintainer"})
    await system.call("PUT", "/api/orgs/acme/teams/ml")
    await system.call("PUT", "/api/orgs/acme/teams/ml/members/carol")
    await system.call("PUT", "/api/orgs/acme/teams/ml/projects/vision", json={"role": "owner"})

    r = connect(system.stack.redis_url)
    user = {"name": "dave", "role": "viewer", "roles": "{}"}
    # an overall role reaches no project of an organization (issue 12): dave is not in acme
    assert await orgs.user_role(r, user, "vision") is None
    assert await orgs.user_role(r, {**user, "name": "bob"}, "vision") == "maintainer"
    assert await orgs.user_role(r, {**user, "name": "carol"}, "vision") == "owner"
    await r.aclose()

    run_path = "/api/projects/vision/pipelines/Hello/runs"
    bob, csrf = await session(system, "bob", "bob-pw-123")
    no_csrf = await bob.post(run_path, json={})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
    assert (await bob.post(run_path, json={}, headers={"X-CSRF-Token": csrf})).status_code == 202
    secret = await bob.put(
        "/api/projects/vision/secrets/TOKEN", json={"value": "x"}, headers={"X-CSRF-Token": csrf}
    )
    assert secret.status_code == 403 and "needs the role owner" in secret.json()["error"]
    carol, carol_csrf = await session(system, "carol", "carol-pw-123")
    ok = await carol.put(
        "/api/projects/vision/secrets/TOKEN",
        json={"value": "x"},
        headers={"X-CSRF-Token": carol_csrf},
    )
    assert ok.status_code == 200
    dave, dave_csrf = await session(system, "dave", "dave-pw-123")
    refused = await dave.post(run_path, json={}, headers={"X-CSRF-Token": dave_csrf})
    assert refused.status_code == 403
    made = await dave.post("/api/orgs", json={"name": "mine"}, headers={"X-CSRF-Token": dave_csrf})
    assert made.status_code == 403
    for client in (bob, carol, dave):
        await client.aclose()


async def test_an_agent_of_the_organization_takes_its_projects_jobs(system: System) -> None:
    await system.project("vision")
    await system.pipeline("vision", PIPELINE)
    await system.call("POST", "/api/orgs", json={"name": "acme"})
    await system.call("PUT", "/api/orgs/acme/projects/vision")
    agent = await system.agent("org-box")  # assigned to no project directly
    await system.call("PUT", f"/api/orgs/acme/agents/{agent.id}")
    run = await system.wait_run(await system.start_run("vision", "Hello"), timeout=30)
    assert run["status"] == "success"
    assert run["jobs"][0]["agent"]["id"] == agent.id
