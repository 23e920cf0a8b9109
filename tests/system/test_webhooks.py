"""Git hosts' real webhook payloads through the trigger service: signatures, one run
per delivery with the right commit, filters, tags, pull requests, branch deletes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from schemas import subjects
from services.trigger.signatures import hex_hmac
from tests.conftest import ROOT
from tests.system.harness import System

FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
SECRET = "It's a Secret to Everybody, twice"


def github(body: bytes, event: str, delivery: str, secret: str) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body),
    }


def gitlab(body: bytes, event: str, delivery: str, secret: str) -> dict[str, str]:
    return {"X-Gitlab-Event": event, "Idempotency-Key": delivery, "X-Gitlab-Token": secret}


def gitea(body: bytes, event: str, delivery: str, secret: str) -> dict[str, str]:
    return {
        "X-Gitea-Event": event,
        "X-Gitea-Delivery": delivery,
        "X-Gitea-Signature": hex_hmac(secret, body),
    }


def forgejo(body: bytes, event: str, delivery: str, secret: str) -> dict[str, str]:
    return {
        "X-Forgejo-Event": event,
        "X-Forgejo-Delivery": delivery,
        "X-Forgejo-Signature": hex_hmac(secret, body),
    }


def bitbucket(body: bytes, event: str, delivery: str, secret: str) -> dict[str, str]:
    return {
        "X-Event-Key": event,
        "X-Request-UUID": delivery,
        "X-Hub-Signature": "sha256=" + hex_hmac(secret, body),
    }


Signer = Callable[[bytes, str, str, str], dict[str, str]]

# host path, signer, fixture, event header, branch, commit of each host's push example
PUSHES = [
    (
        "github",
        github,
        "github/push.branch-created.json",
        "push",
        "master",
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
    ),
    (
        "gitlab",
        gitlab,
        "gitlab/push_hook.json",
        "Push Hook",
        "master",
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    ),
    (
        "gitea",
        gitea,
        "gitea/push.json",
        "push",
        "develop",
        "bffeb74224043ba2feb48d137756c8a9331c449a",
    ),
    (
        "gitea",
        forgejo,
        "gitea/push.json",
        "push",
        "develop",
        "bffeb74224043ba2feb48d137756c8a9331c449a",
    ),
    (
        "bitbucket",
        bitbucket,
        "bitbucket-cloud/third_party/repo_push.branch-update.jenkins-fixture.json",
        "repo:push",
        "main",
        "e42fac24456e4a56f1b7f9358afc3070e3b7ddec",
    ),
    (
        "bitbucket",
        bitbucket,
        "bitbucket-datacenter/repo_refs_changed.json",
        "repo:refs_changed",
        "master",
        "178864a7d521b6f5e720b386b2c2b0ef8563e0dc",
    ),
]


def pipeline(
    name: str, push: dict[str, Any] | None = None, pull_request: dict[str, Any] | None = None
) -> str:
    triggers: dict[str, Any] = {}
    if push is not None:
        triggers["push"] = push
    if pull_request is not None:
        triggers["pull_request"] = pull_request
    doc = {
        "name": name,
        "triggers": triggers,
        "jobs": {"build": {"steps": [{"run": "echo ${{ event.sha }}"}]}},
    }
    return json.dumps(doc)


async def setup(system: System) -> tuple[httpx.AsyncClient, str]:
    url = await system.trigger()
    await system.project("p")
    await system.call("PUT", "/api/projects/p/webhook", json={"secret": SECRET})
    return httpx.AsyncClient(base_url=url, timeout=30), url


async def runs_of(system: System, name: str) -> list[dict[str, Any]]:
    found = await system.call("GET", f"/api/projects/p/pipelines/{name}/runs")
    return [await system.call("GET", f"/api/runs/{r['id']}") for r in found]


async def event_count(js: JetStreamContext) -> int:
    info = await js.stream_info(subjects.EVENTS_STREAM.name)
    return int(info.state.messages)


async def settle(system: System) -> None:
    await asyncio.sleep(1.0)  # the dispatcher has had time to make any run


@pytest.mark.parametrize(
    ("host", "sign", "fixture", "event", "branch", "sha"),
    PUSHES,
    ids=["github", "gitlab", "gitea", "forgejo", "bitbucket-cloud", "bitbucket-dc"],
)
async def test_a_signed_push_makes_one_run(
    system: System,
    js: JetStreamContext,
    host: str,
    sign: Signer,
    fixture: str,
    event: str,
    branch: str,
    sha: str,
) -> None:
    client, _ = await setup(system)
    await system.pipeline("p", pipeline("On push", push={}))
    await system.pipeline("p", pipeline("Other branch", push={"branches": ["nope/*"]}))
    await system.pipeline("p", pipeline("No trigger"))
    body = (FIXTURES / fixture).read_bytes()
    delivery = str(uuid.uuid4())
    headers = {"Content-Type": "application/json", **sign(body, event, delivery, SECRET)}
    first = await client.post(f"/hooks/{host}/p", content=body, headers=headers)
    assert first.status_code == 202, first.text
    again = await client.post(f"/hooks/{host}/p", content=body, headers=headers)
    assert again.status_code == 202 and again.json() == first.json()
    await settle(system)
    (run,) = await runs_of(system, "On push")
    assert run["event"]["sha"] == sha
    assert run["event"]["branch"] == branch
    assert run["trigger"] == "push"
    assert await runs_of(system, "Other branch") == []
    assert await runs_of(system, "No trigger") == []

    before = await event_count(js)
    wrong = {**headers, **sign(body, event, delivery, "not the secret at all")}
    assert (await client.post(f"/hooks/{host}/p", content=body, headers=wrong)).status_code == 401
    if host != "gitlab":  # GitLab sends its token, not a signature of the body
        tampered = body.replace(sha.encode(), b"f" * 40)
        response = await client.post(f"/hooks/{host}/p", content=tampered, headers=headers)
        assert response.status_code == 401, response.text
        assert "does not match" in response.json()["error"]
    missing = {"Content-Type": "application/json"}
    assert (await client.post(f"/hooks/{host}/p", content=body, headers=missing)).status_code == 401
    assert await event_count(js) == before
    await client.aclose()


async def test_github_rules_filters_tags_prs_deletes_and_bad_requests(
    system: System, js: JetStreamContext
) -> None:
    client, _ = await setup(system)
    await system.pipeline("p", pipeline("Main only", push={"branches": ["master"]}))
    await system.pipeline("p", pipeline("Docs", push={"paths": ["docs/**"]}))
    await system.pipeline("p", pipeline("Readme", push={"paths": ["*.md"]}))
    await system.pipeline("p", pipeline("Ignore readme", push={"paths-ignore": ["*.md"]}))
    await system.pipeline("p", pipeline("Tags", push={"tags": ["simple-*"]}))
    await system.pipeline("p", pipeline("PRs", pull_request={"branches": ["master"]}))
    await system.pipeline("p", pipeline("PRs closed", pull_request={"types": ["closed"]}))

    async def send(fixture: str, event: str, body: bytes | None = None) -> httpx.Response:
        raw = body if body is not None else (FIXTURES / fixture).read_bytes()
        headers = {
            "Content-Type": "application/json",
            **github(raw, event, str(uuid.uuid4()), SECRET),
        }
        return await client.post("/hooks/github/p", content=raw, headers=headers)

    assert (await send("github/push.branch-created.json", "push")).status_code == 202
    assert (await send("github/push.tag-created.ghes-35.json", "push")).status_code == 202
    assert (await send("github/pull_request.opened.json", "pull_request")).status_code == 202
    ping = await send("github/ping.json", "ping")
    assert ping.status_code == 200 and ping.json() == {"ignored": "ping"}
    # a branch delete, derived by GitHub's documented change (see the fixtures' README)
    deleted = json.loads((FIXTURES / "github/push.branch-created.json").read_bytes())
    deleted.update(deleted=True, created=False, after="0" * 40)
    gone = await send("", "push", json.dumps(deleted).encode())
    assert gone.status_code == 200 and "deleted" in gone.json()["ignored"]
    await settle(system)
    counts = {
        name: len(await runs_of(system, name))
        for name in ("Main only", "Docs", "Readme", "Ignore readme", "Tags", "PRs", "PRs closed")
    }
    assert counts == {
        "Main only": 1,
        "Docs": 0,
        "Readme": 1,
        "Ignore readme": 0,
        "Tags": 1,
        "PRs": 1,
        "PRs closed": 0,
    }
    (tag_run,) = await runs_of(system, "Tags")
    assert tag_run["event"]["tag"] == "simple-tag" and tag_run["trigger"] == "tag"
    (pr_run,) = await runs_of(system, "PRs")
    assert pr_run["event"]["sha"] == "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    assert pr_run["event"]["pull_request"]["number"] == 2

    before = await event_count(js)
    body = (FIXTURES / "github/push.branch-created.json").read_bytes()
    signed = github(body, "push", "x", SECRET)
    plain = await client.post(
        "/hooks/github/p", content=body, headers={**signed, "Content-Type": "text/plain"}
    )
    assert plain.status_code == 400
    bad = b"{not json"
    broken = await client.post(
        "/hooks/github/p",
        content=bad,
        headers={"Content-Type": "application/json", **github(bad, "push", "y", SECRET)},
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    huge = b" " * (5 << 20) + b"{}"
    too_big = await client.post(
        "/hooks/github/p",
        content=huge,
        headers={"Content-Type": "application/json", **github(huge, "push", "z", SECRET)},
    )
    assert too_big.status_code == 413
    nobody = await client.post(
        "/hooks/github/nope", content=body, headers={"Content-Type": "application/json", **signed}
    )
    assert nobody.status_code == 404
    assert await event_count(js) == before
    await client.aclose()


async def test_gitlab_merge_request_and_a_generic_hook(system: System) -> None:
    client, _ = await setup(system)
    await system.pipeline("p", pipeline("MRs", pull_request={}))
    generic = json.loads(pipeline("Generic"))
    generic["triggers"] = {"webhook": {}}
    await system.pipeline("p", json.dumps(generic))
    body = (FIXTURES / "gitlab/merge_request_hook.json").read_bytes()
    headers = {
        "Content-Type": "application/json",
        **gitlab(body, "Merge Request Hook", str(uuid.uuid4()), SECRET),
    }
    assert (await client.post("/hooks/gitlab/p", content=body, headers=headers)).status_code == 202
    payload = b'{"anything": "goes"}'
    response = await client.post(
        "/hooks/generic/p/Generic",
        content=payload,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"},
    )
    assert response.status_code == 202
    refused = await client.post(
        "/hooks/generic/p/Generic",
        content=payload,
        headers={"Content-Type": "application/json", "Authorization": "Bearer wrong"},
    )
    assert refused.status_code == 401
    await settle(system)
    (mr,) = await runs_of(system, "MRs")
    assert mr["event"]["pull_request"]["action"] == "opened"
    assert mr["event"]["pull_request"]["base"] == "master"
    (hook,) = await runs_of(system, "Generic")
    assert hook["trigger"] == "webhook"
    assert hook["event"]["payload"] == {"anything": "goes"}
    await client.aclose()
