"""Attacks on the git boundary (DESIGN.md §10: a webhook sender must never make git read
its payload as options or code). Each test performs the attack through the agent's real
git functions, the action resolver or the whole system, and fails if it works: the
attack's command would create a marker file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import git
from agent.actions import ActionCache, ActionError
from schemas.pipeline import Step
from services.trigger import hosts
from tests.agent.actions_repos import GREET_SH, SHELL_ACTION, make_action_repo
from tests.conftest import ROOT
from tests.system.harness import System, step_of

FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
SECRET = "a webhook secret of some length"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file an attack's command would create."""
    return tmp_path / "pwned"


@pytest.fixture
def evil(tmp_path: Path, marker: Path) -> Path:
    """A program that creates the marker: what `--upload-pack=<it>` would run (a path
    without spaces fits where a payload allows no whitespace, like `org/name@tag`)."""
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real bare repository, tagged v1."""
    files = {"action-datatorch.yaml": SHELL_ACTION, "greet.sh": GREET_SH}
    return make_action_repo(tmp_path / "repos", "acme/greet", files)


@pytest.fixture(autouse=True)
def _local_repositories_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent as deployed: no RUNYARD_ALLOW_FILE_URLS, unless a test allows it."""
    monkeypatch.delenv("RUNYARD_ALLOW_FILE_URLS", raising=False)


def allow_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNYARD_ALLOW_FILE_URLS", "1")


def attacks(marker: Path) -> list[str]:
    """Clone URLs that run `touch <marker>` in a git that trusts them."""
    return [
        f"--upload-pack=touch {marker};",  # the GitLab incident
        f"ext::sh -c touch% {marker}",
        "fd::0",
        f"ssh://-oProxyCommand=touch%20{marker}/x",
    ]


async def refused(call: Any, marker: Path, *named: str) -> str:
    """Run `call`; it must raise a GitError naming every value in `named`, and have run
    nothing."""
    with pytest.raises(git.GitError) as caught:
        await call
    message = str(caught.value)
    assert "is refused" in message
    for value in named:
        assert repr(value) in message
    assert not marker.exists(), f"the attack ran: {message}"
    return message


async def test_urls_that_run_commands_are_refused_by_every_git_call(
    marker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for allowed in (False, True):  # allowing local repositories allows none of these
        if allowed:
            allow_local(monkeypatch)
        for url in attacks(marker):
            await refused(git.resolve(url, None), marker, url)
            await refused(git.resolve(url, "main"), marker, url)
            await refused(git.fetch_checkout(url, "main", tmp_path / "co"), marker, url)


async def test_refs_that_are_options_are_refused(
    marker: Path, evil: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_local(monkeypatch)
    url = f"file://{repo}"
    for ref in (f"--upload-pack={evil}", f"--upload-pack=touch {marker}", "-q"):
        await refused(git.resolve(url, ref), marker, ref)
        await refused(git.fetch_checkout(url, ref, tmp_path / "co"), marker, ref)
    for ref in ("main..v1", "v1^{}", "main:refs/heads/x", "main\n--upload-pack=x"):
        await refused(git.resolve(url, ref), marker, ref)
    assert (await git.resolve(url, "v1"))[0] == "refs/tags/v1"  # a plain ref still works


async def test_local_repositories_only_when_the_operator_allows_them(
    marker: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for url in (f"file://{repo}", str(repo), f"{repo}/../greet.git"):
        message = await refused(git.resolve(url, "v1"), marker, url)
        assert "RUNYARD_ALLOW_FILE_URLS=1" in message
    allow_local(monkeypatch)
    fetch_ref, commit = await git.resolve(f"file://{repo}", "v1")
    got = await git.fetch_checkout(f"file://{repo}", fetch_ref, tmp_path / "co")
    assert got == commit and (tmp_path / "co" / "greet.sh").is_file()


async def test_past_the_checks_options_stay_operands(
    marker: Path, evil: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Straight into the runner, as if a check were missed: after `--`, git reads a URL or
    a ref as an operand however it is spelled."""
    allow_local(monkeypatch)
    (tmp_path / "co").mkdir()
    await git.git("init", "--quiet", cwd=tmp_path / "co")
    for command, operands in (
        ("ls-remote", (f"--upload-pack=touch {marker};", "HEAD")),
        ("ls-remote", (f"file://{repo}", f"--upload-pack={evil}")),
        ("fetch", (f"--upload-pack=touch {marker};", "main")),
        ("fetch", (f"file://{repo}", f"--upload-pack={evil}")),
    ):
        with contextlib.suppress(git.GitError):  # a pattern that matches nothing is no error
            await git.git(command, operands=operands, cwd=tmp_path / "co")
        assert not marker.exists(), f"the attack ran: {command} {operands}"


async def test_past_the_checks_git_allows_only_our_transports(
    marker: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Git's own transport allow-list is ours, and replaces one the agent inherited."""
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "ext:fd:file")
    for url in (f"ext::sh -c touch% {marker}", f"file://{repo}", str(repo)):
        with pytest.raises(git.GitError, match="not allowed"):
            await git.git("ls-remote", operands=(url, "HEAD"))
        assert not marker.exists(), f"the attack ran: {url}"


async def test_the_action_resolver_refuses_them(
    marker: Path, evil: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_local(monkeypatch)
    monkeypatch.setenv("RUNYARD_ACTIONS_BASE", f"file://{repo.parent.parent}")
    cache, workspace = ActionCache(tmp_path / "cache"), tmp_path / "ws"
    steps = [
        {"action": f"acme/greet@--upload-pack={evil}"},  # org/name@tag from a pipeline
        *({"action": {"name": "acme/x", "tag": "v1", "git": url}} for url in attacks(marker)),
    ]
    for step in steps:
        ref = Step.model_validate(step).action
        assert ref is not None
        with pytest.raises(ActionError) as caught:
            await cache.load(ref, workspace)
        assert str(caught.value).startswith(f"action '{ref.name}': ")
        assert "is refused" in str(caught.value)
        assert not marker.exists(), f"the attack ran: {step}"
    ok = Step.model_validate({"action": "acme/greet@v1"}).action
    assert ok is not None and (await cache.load(ok, workspace)).action.name == "Greet"


# --- clone URLs in webhook payloads -------------------------------------------------

ATTACK = "--upload-pack=touch /tmp/runyard-pwned;"

# host, event, fixture, the keys leading to the clone URL the trigger reads
CLONE_URLS = [
    ("github", "push", "github/push.branch-created.json", ["repository", "clone_url"]),
    ("github", "pull_request", "github/pull_request.opened.json", ["repository", "clone_url"]),
    ("gitea", "push", "gitea/push.json", ["repository", "clone_url"]),
    ("gitlab", "Push Hook", "gitlab/push_hook.json", ["project", "git_http_url"]),
    (
        "gitlab",
        "Merge Request Hook",
        "gitlab/merge_request_hook.json",
        ["object_attributes", "source", "git_http_url"],
    ),
]


def with_clone_url(fixture: str, keys: list[Any], url: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / fixture).read_bytes())
    inner: Any = payload
    for k in keys[:-1]:
        inner = inner[k]
    inner[keys[-1]] = url
    return payload


@pytest.mark.parametrize(("host", "event", "fixture", "keys"), CLONE_URLS)
def test_the_trigger_names_a_refused_clone_url(
    host: str, event: str, fixture: str, keys: list[Any]
) -> None:
    honest = hosts.normalise(host, event, json.loads((FIXTURES / fixture).read_bytes()))
    assert isinstance(honest, hosts.Trigger) and honest.problems == []
    for url in (ATTACK, "ext::sh -c id", "file:///etc", "/srv/git/other.git"):
        found = hosts.normalise(host, event, with_clone_url(fixture, keys, url))
        assert isinstance(found, hosts.Trigger), found
        assert found.repository == url  # kept as data: the run shows what was refused
        assert len(found.problems) == 1 and f"clone URL {url!r} is refused" in found.problems[0]


async def test_the_gitlab_incident_fails_the_run_and_runs_nothing(
    system: System, tmp_path: Path
) -> None:
    """A GitLab push whose `project.git_http_url` was an option: the delivery is accepted
    and says so, the run's checkout fails with a sentence naming the URL, and nothing runs
    (not the URL's command, not the pipeline's steps)."""
    marker = tmp_path / "pwned"
    attack = f"--upload-pack=touch {marker};"
    url = await system.trigger()
    await system.project("p")
    await system.call("PUT", "/api/projects/p/webhook", json={"secret": SECRET})
    await system.agent("a", projects=["p"])
    steps = [{"id": "hello", "run": f"touch {tmp_path / 'step-ran'}"}]
    pipeline = {"name": "On push", "triggers": {"push": {}}, "jobs": {"build": {"steps": steps}}}
    await system.pipeline("p", json.dumps(pipeline))
    body = json.dumps(with_clone_url("gitlab/push_hook.json", ["project", "git_http_url"], attack))
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Push Hook",
        "Idempotency-Key": str(uuid.uuid4()),
        "X-Gitlab-Token": SECRET,
    }
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answer = await client.post("/hooks/gitlab/p", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    (problem,) = answer.json()["problems"]
    assert f"clone URL {attack!r} is refused" in problem
    run = await system.wait_run(await _only_run(system, "On push"))
    assert run["status"] == "failure"
    step = step_of(run, "build")
    assert step["status"] == "failure"
    assert problem in step["error"], step
    assert not marker.exists() and not (tmp_path / "step-ran").exists()
    assert "Traceback" not in system.logs()


async def _only_run(system: System, pipeline: str) -> str:
    for _ in range(100):
        runs = await system.call("GET", f"/api/projects/p/pipelines/{pipeline}/runs")
        if runs:
            return str(runs[0]["id"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no run of {pipeline}" + system.logs())
