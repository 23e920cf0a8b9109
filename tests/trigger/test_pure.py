"""Signatures and normalisation of each host, and which pipelines an event starts."""

from __future__ import annotations

import json
import time
from typing import Any

from runyard.pipeline.validate import validate_text
from schemas.messages import PullRequestInfo, TriggerEvent
from services.dispatcher.matching import starts
from services.trigger import hosts, signatures
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"


def test_githubs_documented_test_vector() -> None:
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signatures.hex_hmac(secret, body) == expected
    good = {"x-hub-signature-256": f"sha256={expected}"}
    assert signatures.check("github", good, body, secret) is None
    assert (
        signatures.check("bitbucket", {"x-hub-signature": f"sha256={expected}"}, body, secret)
        is None
    )
    assert signatures.check("gitea", {"x-gitea-signature": expected}, body, secret) is None
    assert signatures.check("gitea", {"x-forgejo-signature": expected}, body, secret) is None
    assert signatures.check("github", good, body + b" ", secret) is not None
    assert signatures.check("github", {}, body, secret) == "missing x-hub-signature-256 header"
    assert signatures.check("gitlab", {"x-gitlab-token": secret}, body, secret) is None
    assert signatures.check("generic", {"authorization": f"Bearer {secret}"}, body, secret) is None


def load(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / path).read_bytes())
    return data


def test_normalised_pushes_and_pull_requests() -> None:
    push = hosts.normalise("github", "push", load("github/push.branch-created.json"))
    assert isinstance(push, hosts.Trigger)
    assert (push.kind, push.branch, push.before, push.paths) == (
        "push",
        "master",
        None,
        ["README.md"],
    )
    tag = hosts.normalise("github", "push", load("github/push.tag-created.ghes-35.json"))
    assert isinstance(tag, hosts.Trigger) and (tag.kind, tag.tag) == ("tag", "simple-tag")
    gitlab = hosts.normalise("gitlab", "Push Hook", load("gitlab/push_hook.json"))
    assert isinstance(gitlab, hosts.Trigger)
    assert gitlab.paths == ["CHANGELOG", "app/controller/application.rb"]
    assert gitlab.repository == "http://example.com/mike/diaspora.git"
    mr = hosts.normalise("gitlab", "Merge Request Hook", load("gitlab/merge_request_hook.json"))
    assert isinstance(mr, hosts.Trigger) and mr.pull_request is not None
    assert (mr.pull_request["action"], mr.pull_request["head"]) == ("opened", "ms-viewport")
    gitea = hosts.normalise("gitea", "push", load("gitea/push.json"))
    assert isinstance(gitea, hosts.Trigger) and gitea.paths_known is False
    deleted = load("gitlab/push_hook.json") | {"after": "0" * 40, "checkout_sha": "0" * 40}
    assert isinstance(hosts.normalise("gitlab", "Push Hook", deleted), hosts.Ignored)
    assert isinstance(
        hosts.normalise("github", "delete", load("github/delete.tag.json")), hosts.Ignored
    )


def test_delivery_ids() -> None:
    assert (
        hosts.delivery_id("gitlab", {"idempotency-key": "k", "x-gitlab-event-uuid": "u"}, b"")
        == "k"
    )
    a = hosts.delivery_id("bitbucket", {"x-event-key": "repo:push"}, b"{}")
    assert a == hosts.delivery_id("bitbucket", {"x-event-key": "repo:push"}, b"{}")
    assert a != hosts.delivery_id("bitbucket", {"x-event-key": "repo:push"}, b"{ }")


def pipeline(triggers: str) -> Any:
    result = validate_text(
        f"name: P\ntriggers:\n{triggers}\njobs:\n  a:\n    steps:\n      - run: 'true'\n", "p.yaml"
    )
    assert result.pipeline is not None, result.problems
    return result.pipeline


def event(**fields: Any) -> TriggerEvent:
    return TriggerEvent(id="e", project="p", created_at=time.time(), **fields)


def test_push_filters() -> None:
    main = pipeline("  push: {branches: [main, 'release/*'], paths: ['src/**', '!src/*.md']}")
    assert starts(main, event(kind="push", branch="main", paths=["src/a.py"]))
    assert starts(main, event(kind="push", branch="release/1", paths=["src/x/y.py"]))
    assert not starts(main, event(kind="push", branch="dev", paths=["src/a.py"]))
    assert not starts(main, event(kind="push", branch="main", paths=["src/notes.md"]))
    assert starts(main, event(kind="push", branch="main", paths_known=False))
    assert not starts(main, event(kind="tag", tag="v1"))
    tags = pipeline("  push: {tags: ['v*']}")
    assert starts(tags, event(kind="tag", tag="v1.2"))
    assert not starts(tags, event(kind="push", branch="main"))
    anything = pipeline("  push: {}")
    assert starts(anything, event(kind="push", branch="x"))
    assert starts(anything, event(kind="tag", tag="x"))
    assert not starts(pipeline("  manual: {}"), event(kind="push", branch="x"))


def test_pull_requests_chains_and_targets() -> None:
    prs = pipeline("  pull_request: {branches: [main]}")
    info = PullRequestInfo(number=1, action="opened", base="main", head="f")
    assert starts(prs, event(kind="pull_request", pull_request=info))
    closed = info.model_copy(update={"action": "closed"})
    assert not starts(prs, event(kind="pull_request", pull_request=closed))
    other = info.model_copy(update={"base": "dev"})
    assert not starts(prs, event(kind="pull_request", pull_request=other))
    chained = pipeline("  pipeline: {name: Prepare, status: success}")
    assert starts(
        chained, event(kind="pipeline", payload={"pipeline": "Prepare", "status": "success"})
    )
    assert not starts(
        chained, event(kind="pipeline", payload={"pipeline": "Prepare", "status": "failure"})
    )
    anyhow = pipeline("  pipeline: {name: Prepare, status: any}")
    assert starts(
        anyhow, event(kind="pipeline", payload={"pipeline": "Prepare", "status": "failure"})
    )
    assert starts(pipeline("  manual: {}"), event(kind="cron", pipeline="P"))
    assert not starts(pipeline("  manual: {}"), event(kind="webhook", pipeline="P"))
    assert starts(pipeline("  webhook: {}"), event(kind="webhook", pipeline="P"))


def gitea_pull_request(action: str) -> dict[str, Any]:
    """GitHub's pull request example as Gitea sends it: Gitea's `repo_id` on head and base
    (see the fixtures' README), and Gitea's name for the action."""
    payload = load("github/pull_request.opened.json")
    repo_id = payload["repository"]["id"]
    payload["pull_request"]["head"]["repo_id"] = payload["pull_request"]["base"]["repo_id"] = (
        repo_id
    )
    return payload | {"action": action}


def test_gitea_pull_request_actions_are_githubs() -> None:
    """Gitea/Forgejo say `synchronized`, `label_updated`, `label_cleared` (HookIssueAction
    in modules/structs/hook.go); pipelines say GitHub's names."""
    every = pipeline("  pull_request: {types: [opened, synchronize, reopened, closed, labeled]}")
    defaults = pipeline("  pull_request: {}")
    for sent, meant in [
        ("opened", "opened"),
        ("synchronized", "synchronize"),
        ("reopened", "reopened"),
        ("closed", "closed"),
        ("label_updated", "labeled"),
    ]:
        found = hosts.normalise("gitea", "pull_request", gitea_pull_request(sent))
        assert isinstance(found, hosts.Trigger) and found.pull_request is not None
        assert found.pull_request["action"] == meant
        assert found.fork is False
        info = PullRequestInfo.model_validate(found.pull_request)
        assert starts(every, event(kind="pull_request", pull_request=info)), sent
        assert starts(defaults, event(kind="pull_request", pull_request=info)) == (
            meant in ("opened", "synchronize", "reopened")
        )
    github = hosts.normalise("github", "pull_request", load("github/pull_request.opened.json"))
    assert isinstance(github, hosts.Trigger) and github.pull_request is not None
    assert github.pull_request["action"] == "opened"


def test_event_ids_are_per_delivery_project_and_pipeline() -> None:
    headers = {"x-github-delivery": "d-1"}
    one = hosts.event_id("github", headers, b"{}", "a", None)
    assert one == hosts.event_id("github", headers, b"{}", "a", None)  # a redelivery
    assert one != hosts.event_id("github", headers, b"{}", "b", None)
    generic = hosts.event_id("generic", {}, b'{"x": 1}', "a", "P")
    assert generic != hosts.event_id("generic", {}, b'{"x": 1}', "b", "P")
    assert generic != hosts.event_id("generic", {}, b'{"x": 1}', "a", "Q")
    assert generic == hosts.event_id("generic", {}, b'{"x": 1}', "a", "P")
    long = hosts.delivery_id("github", {"x-github-delivery": "x" * 500}, b"")
    assert long.startswith("sha256-") and len(long) < 50
    odd = hosts.event_id("generic", {}, b"", "a", "P\r\nX: y")
    assert "\r" not in odd and "\n" not in odd
