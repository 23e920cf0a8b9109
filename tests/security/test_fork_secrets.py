"""Attacks with a fork's pull request (DESIGN.md §10: a pipeline never runs with secrets on
a fork's pull request unless it opts in). The hosts' real payloads, changed only where a
fork's differ, are marked as forks; a fork's step that prints `${{ secrets.TOKEN }}` (or
the environment, or the value reversed, which no mask catches) shows nothing of it,
unless its trigger says `secrets: true`."""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any

import orjson
import pytest
from nats.js import JetStreamContext

from runyard.cli.schema import json_schema
from runyard.pipeline.validate import validate_text
from schemas import subjects
from schemas.messages import PullRequestInfo, TriggerEvent
from services.dispatcher.runs import plan_for, run_secrets
from services.trigger import hosts
from tests.conftest import ROOT
from tests.system.harness import System, step_of
from tests.system.test_outputs import wait_log_ended

FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
TOKEN = "tok-4f1d-secret-value"


def load(fixture: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / fixture).read_bytes())
    return payload


def github_fork(payload: dict[str, Any]) -> dict[str, Any]:
    """A pull request from a fork: its head repository is another one (GitHub's
    `head.repo` is the fork; `fork` is true on it)."""
    forked = copy.deepcopy(payload)
    head = forked["pull_request"]["head"]["repo"]
    head.update(id=head["id"] + 1, full_name="Mallory/Hello-World", fork=True)
    return forked


def gitea(payload: dict[str, Any]) -> dict[str, Any]:
    """Gitea sends GitHub's shape, plus `repo_id` on `head` and `base` (structs.PRBranchInfo;
    Gitea publishes no pull request example to copy)."""
    shaped = copy.deepcopy(payload)
    for side in ("head", "base"):
        branch = shaped["pull_request"][side]
        branch["repo_id"] = branch["repo"]["id"]
    return shaped


def gitea_fork(payload: dict[str, Any]) -> dict[str, Any]:
    forked = gitea(payload)
    forked["pull_request"]["head"]["repo_id"] += 1
    return forked


def deleted_fork(payload: dict[str, Any]) -> dict[str, Any]:
    """GitHub sends `head.repo: null` once the fork is deleted."""
    forked = copy.deepcopy(payload)
    forked["pull_request"]["head"]["repo"] = None
    return forked


def gitlab_fork(payload: dict[str, Any]) -> dict[str, Any]:
    """A merge request from a fork has the fork as its source project."""
    forked = copy.deepcopy(payload)
    forked["object_attributes"]["source_project_id"] += 1
    return forked


GITHUB_PR = "github/pull_request.opened.json"
GITLAB_MR = "gitlab/merge_request_hook.json"


@pytest.mark.parametrize(
    ("host", "event", "fixture", "change", "fork"),
    [
        ("github", "pull_request", GITHUB_PR, copy.deepcopy, False),
        ("github", "pull_request", GITHUB_PR, github_fork, True),
        ("github", "pull_request", GITHUB_PR, deleted_fork, True),
        ("gitea", "pull_request", GITHUB_PR, gitea, False),
        ("gitea", "pull_request", GITHUB_PR, gitea_fork, True),
        ("gitlab", "Merge Request Hook", GITLAB_MR, copy.deepcopy, False),
        ("gitlab", "Merge Request Hook", GITLAB_MR, gitlab_fork, True),
    ],
    ids=[
        "github",
        "github-fork",
        "github-deleted-fork",
        "gitea",
        "gitea-fork",
        "gitlab",
        "gl-fork",
    ],
)
def test_pull_requests_from_forks_are_marked(
    host: str, event: str, fixture: str, change: Any, fork: bool
) -> None:
    found = hosts.normalise(host, event, change(load(fixture)))
    assert isinstance(found, hosts.Trigger) and found.kind == "pull_request"
    assert found.fork is fork


def test_a_forks_own_branches_are_not_a_fork() -> None:
    """`repo.fork` is also true on a fork's own pull requests: identity decides."""
    payload = load(GITHUB_PR)
    for side in ("head", "base"):
        payload["pull_request"][side]["repo"]["fork"] = True
    found = hosts.normalise("github", "pull_request", payload)
    assert isinstance(found, hosts.Trigger) and found.fork is False


PIPELINE = """
name: {name}
triggers: {triggers}
jobs:
  build:
    steps:
      - id: peek
        run: |
          echo "secret: ${{{{ secrets.TOKEN }}}}"
          printf '%s' "${{{{ secrets.TOKEN }}}}" | rev; echo
          env
          echo "::length::$(printf '%s' "${{{{ secrets.TOKEN }}}}" | wc -c)"
"""

# name, triggers, whether a fork's code gets the secrets
PIPELINES = [
    ("Plain", "{pull_request: {}}", False),
    ("Opted in", "{pull_request: {secrets: true}}", True),
    ("After", "{pipeline: {name: Plain, status: any}}", False),
    ("After, opted in", "{pipeline: {name: Plain, status: any, secrets: true}}", True),
]


def source(name: str, triggers: str) -> str:
    return PIPELINE.format(name=name, triggers=triggers)


@pytest.mark.parametrize(("name", "triggers", "opted_in"), PIPELINES)
def test_run_secrets(name: str, triggers: str, opted_in: bool) -> None:
    pipeline, _ = plan_for(source(name, triggers), "yaml")
    kind = "pipeline" if "pipeline:" in triggers else "pull_request"
    secrets = {"TOKEN": TOKEN}
    assert run_secrets(pipeline, {"kind": kind, "fork": False}, secrets) == secrets
    withheld = run_secrets(pipeline, {"kind": kind, "fork": True}, secrets)
    assert withheld == (secrets if opted_in else {"TOKEN": ""})
    other = "pipeline" if kind == "pull_request" else "pull_request"  # opting in elsewhere
    assert run_secrets(pipeline, {"kind": other, "fork": True}, secrets) == {"TOKEN": ""}
    assert run_secrets(pipeline, {"kind": "manual", "fork": True}, secrets) == {"TOKEN": ""}


def test_the_opt_in_is_a_boolean_in_the_schema() -> None:
    result = validate_text(source("X", '{pull_request: {secrets: "yes"}}'), "p.yaml")
    assert [p.message for p in result.problems] == [
        "triggers.pull_request.secrets: expected true or false, got a string"
    ]
    models: Any = json_schema("pipeline")["$defs"]
    for model in ("PullRequest", "PipelineTrigger"):
        schema = models[model]["properties"]["secrets"]
        assert schema["type"] == "boolean" and schema["default"] is False


# --- the real path: dispatcher, agent, logs -----------------------------------------


def pr_event(payload: dict[str, Any]) -> TriggerEvent:
    """What the trigger publishes for a GitHub pull request, without the clone URL (the
    agent has no network to fetch the example's commit; the step needs no checkout)."""
    found = hosts.normalise("github", "pull_request", payload)
    assert isinstance(found, hosts.Trigger) and found.pull_request is not None
    return TriggerEvent(
        id=f"github:{uuid.uuid4()}",
        kind="pull_request",
        project="p",
        ref=found.ref,
        branch=found.branch,
        actor=found.actor,
        pull_request=PullRequestInfo.model_validate(found.pull_request),
        fork=found.fork,
        payload=payload,
        created_at=time.time(),
    )


async def runs(system: System, count: int) -> dict[str, list[dict[str, Any]]]:
    """Every pipeline's runs (oldest first), once `count` runs in all have ended."""
    found: dict[str, list[dict[str, Any]]] = {}

    async def ended() -> bool:
        found.clear()
        for name, _, _ in PIPELINES:
            listed = await system.call("GET", f"/api/projects/p/pipelines/{name}/runs")
            found[name] = [await system.wait_run(r["id"]) for r in reversed(listed)]
        return sum(len(r) for r in found.values()) >= count

    await system.wait_for(ended, 90, f"{count} runs")
    return found


async def assert_saw(system: System, run: dict[str, Any], secrets: bool) -> None:
    """The run's step read the secret (masked in its log) or an empty string; its log
    and the run's record show neither the value nor the value reversed."""
    assert run["status"] == "success", run
    log = await wait_log_ended(system, run["id"], "build", "peek")
    shown = "\n".join(line["text"] for line in log["lines"]) + orjson.dumps(run).decode()
    length = step_of(run, "build")["outputs"]["length"]
    assert TOKEN not in shown, shown
    assert (length, TOKEN[::-1] in shown) == ((len(TOKEN), True) if secrets else (0, False)), run


async def test_a_forks_step_never_sees_the_secrets_unless_opted_in(
    system: System, js: JetStreamContext
) -> None:
    await system.project("p")
    await system.call("PUT", "/api/projects/p/secrets/TOKEN", json={"value": TOKEN})
    await system.agent("a", projects=["p"], slots=2)
    for name, triggers, _ in PIPELINES:
        await system.pipeline("p", source(name, triggers))

    async def publish(event: TriggerEvent) -> None:
        subject = subjects.events(event.kind, "p")
        await js.publish(subject, event.encode(), headers={"Nats-Msg-Id": event.id})

    fork = pr_event(github_fork(load(GITHUB_PR)))
    assert fork.fork
    await publish(fork)
    found = await runs(system, 4)  # Plain, Opted in, and the two chained after Plain
    assert found["Plain"][0]["event"]["fork"] is True
    assert found["After"][0]["event"]["fork"] is True  # chained runs build the fork's code
    for name, _, opted_in in PIPELINES:
        await assert_saw(system, found[name][0], secrets=opted_in)

    # a re-run is still the fork's code (and chains again)
    await system.call("POST", f"/api/runs/{found['Plain'][0]['id']}/rerun")
    found = await runs(system, 7)
    for name in ("Plain", "After", "After, opted in"):
        await assert_saw(system, found[name][1], secrets=name == "After, opted in")

    await publish(pr_event(load(GITHUB_PR)))  # the same pull request from a branch
    found = await runs(system, 11)
    for name, _, _ in PIPELINES:
        await assert_saw(system, found[name][-1], secrets=True)
