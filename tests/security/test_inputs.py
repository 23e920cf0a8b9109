"""Hostile input against the real services (issue 12: bounded parsing, errors, login,
webhooks, CLI): every refusal is a JSON `{"error": …}` with its status, nothing takes the
web process down, an outage is a 503 that says which dependency, the login page cannot
be guessed at or sent elsewhere, and one webhook body makes one run per place it is sent."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import time
import uuid
from typing import Any

import httpx

from services.stack import free_port
from services.store import accounts
from services.store.connection import connect
from services.trigger.signatures import hex_hmac
from services.web import throttle
from tests.conftest import ROOT
from tests.pipeline.test_source import ALIAS_BOMB
from tests.system.harness import System
from tests.system.test_cli import cli as run_cli
from tests.system.test_cli import login as cli_login

FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
SECRET = "a webhook secret, long enough"
PASSWORD = "correct horse battery"

ONE_STEP = """name: {name}
triggers: {triggers}
jobs:
  build:
    steps:
      - run: echo hi
"""


def pipeline(name: str, triggers: str = "{manual: {}}") -> str:
    return ONE_STEP.format(name=name, triggers=triggers)


def refused(response: httpx.Response, status: int, said: str = "") -> str:
    """The response is a JSON error with `status` (and `said` in its sentence)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert isinstance(error, str) and said in error, error
    return error


# --- bounded parsing and JSON errors ----------------------------------------------------


async def test_bombs_and_bad_bodies_get_4xx_and_the_web_stays_up(system: System) -> None:
    http = system.http
    assert http is not None
    bomb = await http.post("/api/validate", json={"source": ALIAS_BOMB})
    error = refused(bomb, 413, "expands to more than 100,000 values")
    assert bomb.json()["problems"][0]["line"] == 6, error
    deep = {"source": "[" * 100 + "]" * 100, "format": "json"}
    refused(await http.post("/api/validate", json=deep), 413, "nests deeper than 64 levels")
    fine = await http.post("/api/validate", json={"source": pipeline("Fine")})
    assert fine.status_code == 200 and fine.json() == {"problems": []}

    nested = ("[" * 100_000 + "]" * 100_000).encode()
    headers = {"Content-Type": "application/json"}
    said = "nests deeper than 64 levels"
    refused(await http.post("/api/projects", content=nested, headers=headers), 400, said)
    refused(await http.post("/api/projects", content=b"{nope", headers=headers), 400, "JSON")
    refused(await http.post("/api/projects", content=b"[1]", headers=headers), 400, "object")
    huge = b'{"name": "' + b"x" * (3 << 20) + b'"}'
    refused(await http.post("/api/projects", content=huge, headers=headers), 413, "limit")
    refused(await http.get("/api/no/such/route"), 404)

    health = await http.get("/api/health")
    assert health.status_code == 200 and health.json()["ok"] is True
    assert health.json()["valkey"]["ok"] and health.json()["nats"]["ok"]


async def test_bad_query_parameters_are_400s(system: System) -> None:
    await system.project("p")
    await system.pipeline("p", pipeline("P"))
    run_id = await system.start_run("p", "P")
    await system.wait_for(lambda: _exists(system, run_id), 30, "the run to be made")
    http = system.http
    assert http is not None
    runs = "/api/projects/p/pipelines/P/runs"
    logs = f"/api/runs/{run_id}/jobs/build/steps/s1/logs"
    run = await system.call("GET", f"/api/runs/{run_id}")
    logs = f"/api/runs/{run_id}/jobs/build/steps/{run['jobs'][0]['steps'][0]['id']}/logs"
    for path, params in [
        (runs, {"limit": "abc"}),
        (runs, {"limit": "-5"}),
        (runs, {"limit": "0"}),
        (runs, {"limit": "1e9"}),
        (runs, {"limit": "²"}),
        (runs, {"before": "yesterday"}),
        (logs, {"attempt": "xyz"}),
        (logs, {"attempt": "0"}),
        (logs, {"limit": "abc"}),
        (logs, {"from": "xyz"}),
        (logs, {"from": "9" * 40}),
    ]:
        name = next(iter(params))
        refused(await http.get(path, params=params), 400, f"'{name}' must be a whole number")
    assert (await http.get(runs, params={"limit": "100000"})).status_code == 200  # capped
    assert (await http.get(logs, params={"attempt": "1", "limit": "5"})).status_code == 200


async def _exists(system: System, run_id: str) -> bool:
    return await system.run(run_id) is not None


# --- outages ----------------------------------------------------------------------------


async def test_valkey_down_is_a_503_that_says_so(system: System) -> None:
    """A web service whose Valkey is not there: API calls and pages answer 503 with the
    reason, and its health check names Valkey while NATS is fine."""
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {**system.env, **system.stack.service_env("web"), "RUNYARD_REDIS_URL": dead}
    proc = system.spawn("web-without-valkey", "serve", "web", "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            health = await _first_answer(client, "/api/health")
            assert health.status_code == 503, health.text
            body = health.json()
            assert body["ok"] is False
            assert body["valkey"]["ok"] is False and body["valkey"]["error"]
            assert body["nats"]["ok"] is True
            key = {"Authorization": f"Bearer {system.key}"}
            error = refused(await client.get("/api/projects", headers=key), 503)
            assert error.startswith("the state store (Valkey/Redis) is unavailable: ")
            page = await client.get("/", headers={"Cookie": "ry_session=x"})
            assert page.status_code == 503, page.text
            assert page.headers["content-type"].startswith("text/html")
            assert "Valkey" in page.text
        assert proc.popen.poll() is None, "the web service died"
    finally:
        proc.kill(signal.SIGKILL)


async def _first_answer(client: httpx.AsyncClient, path: str) -> httpx.Response:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            return await client.get(path)
        except httpx.HTTPError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"no answer on {path}")


# --- the login page ---------------------------------------------------------------------


async def _user(system: System, name: str) -> None:
    r = connect(system.stack.redis_url)
    await accounts.create_user(r, name, PASSWORD, role="admin")
    await r.aclose()


async def _log_in(
    client: httpx.AsyncClient, name: str, password: str, next_: str = "/", **headers: str
) -> httpx.Response:
    form = {"username": name, "password": password, "next": next_}
    return await client.post("/login", data=form, headers=headers)


async def test_logins_are_throttled_per_account_and_address(system: System) -> None:
    await _user(system, "ada")
    await _user(system, "bob")
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        for _ in range(throttle.ACCOUNT_LIMIT):
            assert (await _log_in(client, "ada", "wrong")).status_code == 401
        right = await _log_in(client, "ada", PASSWORD)
        assert right.status_code == 429, right.text
        assert "Too many failed logins" in right.text
        assert 0 < int(right.headers["retry-after"]) <= throttle.WINDOW
        assert "ry_session" not in right.cookies
        # the account is held, not the address (yet): another account still logs in
        assert (await _log_in(client, "bob", PASSWORD)).status_code == 303
        for i in range(throttle.ADDRESS_LIMIT - throttle.ACCOUNT_LIMIT):
            assert (await _log_in(client, f"guess-{i}", "wrong")).status_code == 401
        assert (await _log_in(client, "bob", PASSWORD)).status_code == 429


async def test_next_stays_on_this_site_and_cookies_follow_https(system: System) -> None:
    await _user(system, "ada")
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        for target, lands in [
            ("//evil.example/", "/"),
            ("/\\evil.example", "/"),
            ("https://evil.example/", "/"),
            ("/p/vision?tab=runs", "/p/vision?tab=runs"),
        ]:
            response = await _log_in(client, "ada", PASSWORD, target)
            assert response.status_code == 303
            assert response.headers["location"] == lands
        page = await client.get("/login", params={"next": "//evil.example/"})
        assert "evil.example" not in page.text
        plain = await _log_in(client, "ada", PASSWORD)
        cookie = plain.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
        assert "strict-transport-security" not in plain.headers
        proxied = await _log_in(client, "ada", PASSWORD, **{"X-Forwarded-Proto": "https"})
        assert "; secure" in proxied.headers["set-cookie"].lower()
        assert proxied.headers["strict-transport-security"].startswith("max-age=")


async def test_security_headers_on_pages_and_the_api(system: System) -> None:
    assert system.http is not None
    async with httpx.AsyncClient(base_url=system.url, timeout=30) as client:
        page = await client.get("/login")
    api = await system.http.get("/api/projects")
    for response in (page, api):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "default-src 'self'" in csp and "object-src 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["cache-control"] == "no-store"


# --- webhooks ---------------------------------------------------------------------------


async def _hooks(system: System, *projects: str) -> httpx.AsyncClient:
    url = await system.trigger()
    for project in projects:
        await system.project(project)
        await system.call("PUT", f"/api/projects/{project}/webhook", json={"secret": SECRET})
    return httpx.AsyncClient(base_url=url, timeout=30)


async def _runs(system: System, project: str, name: str) -> list[dict[str, Any]]:
    found = await system.call("GET", f"/api/projects/{project}/pipelines/{name}/runs")
    return [await system.call("GET", f"/api/runs/{r['id']}") for r in found]


async def test_one_webhook_body_is_one_run_per_project_and_pipeline(system: System) -> None:
    client = await _hooks(system, "p", "q")
    for project, name in [("p", "Hook"), ("p", "Other"), ("q", "Hook")]:
        await system.pipeline(project, pipeline(name, "{webhook: {}}"))
    await system.pipeline("p", pipeline("Pushes", "{push: {}}"))
    await system.pipeline("q", pipeline("Pushes", "{push: {}}"))
    body = b'{"same": "body"}'  # no delivery id: the id is a hash of what arrived
    generic = {"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"}
    for target in ("p/Hook", "q/Hook", "p/Other", "p/Hook"):  # the last is a redelivery
        sent = await client.post(f"/hooks/generic/{target}", content=body, headers=generic)
        assert sent.status_code == 202, sent.text
    push = (FIXTURES / "github/push.branch-created.json").read_bytes()
    delivery = str(uuid.uuid4())
    github = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,  # the same delivery id, sent to two projects' hooks
        "X-Hub-Signature-256": "sha256=" + hex_hmac(SECRET, push),
    }
    for project in ("p", "q", "p"):
        sent = await client.post(f"/hooks/github/{project}", content=push, headers=github)
        assert sent.status_code == 202, sent.text
    await client.aclose()
    expected = {("p", "Hook"): 1, ("q", "Hook"): 1, ("p", "Other"): 1}
    expected |= {("p", "Pushes"): 1, ("q", "Pushes"): 1}

    async def counted() -> bool:
        found = {k: len(await _runs(system, *k)) for k in expected}
        return found == expected

    await system.wait_for(counted, 30, f"runs {expected}")
    await asyncio.sleep(1.0)  # and no second run of a redelivery comes later
    assert await counted()


def _gitea_pull_request(action: str) -> bytes:
    payload = json.loads((FIXTURES / "github/pull_request.opened.json").read_bytes())
    shaped = copy.deepcopy(payload)
    for side in ("head", "base"):
        shaped["pull_request"][side]["repo_id"] = shaped["pull_request"][side]["repo"]["id"]
    shaped["action"] = action
    return json.dumps(shaped).encode()


async def test_gitea_and_forgejo_pull_request_actions_match_types(system: System) -> None:
    client = await _hooks(system, "p")
    types = "{pull_request: {types: [opened, synchronize, closed, reopened]}}"
    await system.pipeline("p", pipeline("Every", types))
    await system.pipeline("p", pipeline("Defaults", "{pull_request: {}}"))
    for n, action in enumerate(["opened", "synchronized", "closed", "reopened"]):
        body = _gitea_pull_request(action)
        prefix = "X-Forgejo" if n % 2 else "X-Gitea"
        headers = {
            "Content-Type": "application/json",
            f"{prefix}-Event": "pull_request",
            f"{prefix}-Delivery": str(uuid.uuid4()),
            f"{prefix}-Signature": hex_hmac(SECRET, body),
        }
        sent = await client.post("/hooks/gitea/p", content=body, headers=headers)
        assert sent.status_code == 202, sent.text
    await client.aclose()

    async def made() -> bool:
        return len(await _runs(system, "p", "Every")) == 4

    await system.wait_for(made, 30, "four runs")
    actions = sorted(
        r["event"]["pull_request"]["action"] for r in await _runs(system, "p", "Every")
    )
    assert actions == ["closed", "opened", "reopened", "synchronize"]
    await asyncio.sleep(0.5)
    defaults = sorted(
        r["event"]["pull_request"]["action"] for r in await _runs(system, "p", "Defaults")
    )
    assert defaults == ["opened", "reopened", "synchronize"]


# --- the CLI ----------------------------------------------------------------------------

FORM = """name: Train
triggers:
  manual:
    form:
      type: object
      required: [lr]
      properties:
        epochs: {type: integer, default: 10}
        lr: {type: number}
jobs:
  train:
    steps:
      - run: echo ${{ input.epochs }}
"""


async def test_cli_prints_form_errors_per_field(system: System) -> None:
    await system.project("p")
    await system.pipeline("p", FORM)
    await asyncio.to_thread(cli_login, system)
    done = await asyncio.to_thread(
        run_cli, system, "run", "Train", "-p", "p", "--input", "epochs=abc"
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "KeyError" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "Error: 2 run input(s) do not fit the form", done.stderr
    assert sorted(lines[1:]) == ["  'epochs': 'abc' is not of type 'integer'", "  'lr' is required"]
