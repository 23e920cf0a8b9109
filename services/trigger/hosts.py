"""Each git host's deliveries → one normalised trigger (no I/O): which event it is, its
delivery id, and the fields of `TriggerEvent` (kind, repository, ref, branch or tag,
commit, before, changed paths, actor, pull request, whether it comes from a fork). Pings
and events Runyard does not act on become an `Ignored` with a reason; so does a deleted
branch or tag.

A clone URL git must not be given (an option, a helper transport, a local path) does not
refuse the delivery: it becomes one of the trigger's `problems`, and the agents, which
check it again, fail the run's checkout with the same sentence."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runyard.git_inputs import url_problem

ZERO_SHA = "0" * 40
HOSTS = ("github", "gitlab", "gitea", "bitbucket", "generic")

EVENT_HEADERS = {
    "github": ("x-github-event",),
    "gitlab": ("x-gitlab-event",),
    "gitea": ("x-forgejo-event", "x-gitea-event"),
    "bitbucket": ("x-event-key",),
    "generic": ("x-event",),
}
DELIVERY_HEADERS = {
    "github": ("x-github-delivery",),
    "gitlab": ("idempotency-key", "x-gitlab-event-uuid"),  # the first is retry-stable
    "gitea": ("x-forgejo-delivery", "x-gitea-delivery"),
    "bitbucket": ("x-request-uuid", "x-request-id"),  # Cloud, Data Center
    "generic": ("x-delivery-id", "idempotency-key"),
}
GITLAB_ACTIONS = {
    "open": "opened",
    "update": "synchronize",
    "close": "closed",
    "reopen": "reopened",
    "merge": "merged",
}


@dataclass
class Trigger:
    kind: str
    repository: str | None = None
    ref: str | None = None
    branch: str | None = None
    tag: str | None = None
    sha: str | None = None
    before: str | None = None
    paths: list[str] = field(default_factory=list)
    paths_known: bool = True
    actor: str | None = None
    pull_request: dict[str, Any] | None = None
    fork: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class Ignored:
    reason: str


def first_header(headers: Mapping[str, str], names: tuple[str, ...]) -> str:
    return next((headers[n] for n in names if headers.get(n)), "")


def event_name(host: str, headers: Mapping[str, str]) -> str:
    return first_header(headers, EVENT_HEADERS[host])


def delivery_id(host: str, headers: Mapping[str, str], body: bytes) -> str:
    """The host's delivery id, or (for hosts that send none) a hash of what arrived, so
    a re-sent identical delivery is still recognised."""
    given = first_header(headers, DELIVERY_HEADERS[host])
    if given:
        return given
    digest = hashlib.sha256(host.encode() + b"\0" + event_name(host, headers).encode() + b"\0")
    digest.update(body)
    return "sha256-" + digest.hexdigest()[:32]


def _ref_parts(ref: str) -> tuple[str | None, str | None]:
    """(branch, tag) of a full ref."""
    if ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/"), None
    if ref.startswith("refs/tags/"):
        return None, ref.removeprefix("refs/tags/")
    return None, None


def _changed(commits: list[dict[str, Any]]) -> list[str]:
    paths: set[str] = set()
    for commit in commits or []:
        for key in ("added", "removed", "modified"):
            paths.update(commit.get(key) or [])
    return sorted(paths)


def _push(
    ref: str,
    before: str | None,
    after: str | None,
    commits: list[dict[str, Any]],
    repository: str | None,
    actor: str | None,
) -> Trigger | Ignored:
    branch, tag = _ref_parts(ref)
    if after == ZERO_SHA:
        return Ignored(f"{ref} was deleted")
    if branch is None and tag is None:
        return Ignored(f"{ref} is neither a branch nor a tag")
    listed = not commits or any(k in c for c in commits for k in ("added", "removed", "modified"))
    return Trigger(
        kind="tag" if tag else "push",
        repository=repository,
        ref=ref,
        branch=branch,
        tag=tag,
        sha=after,
        before=None if before == ZERO_SHA else before,
        paths=_changed(commits),
        paths_known=listed,
        actor=actor,
    )


def _other_repository(head: dict[str, Any], base: dict[str, Any]) -> bool:
    """A pull request's head is another repository than its base (a fork), or unknown (a
    deleted fork). Identity, not `repo.fork`: that flag is also set on a fork's own
    branches, whose pull requests come from the project itself."""
    head_id = head.get("repo_id") or (head.get("repo") or {}).get("id")  # Gitea sends repo_id
    base_id = base.get("repo_id") or (base.get("repo") or {}).get("id")
    return head_id is None or head_id != base_id


def _github_like(event: str, p: dict[str, Any]) -> Trigger | Ignored:
    """GitHub, and Gitea/Forgejo, which send GitHub's shapes."""
    repo = p.get("repository") or {}
    sender = (p.get("sender") or {}).get("login")
    if event == "push":
        if p.get("deleted"):
            return Ignored(f"{p.get('ref')} was deleted")
        pusher = p.get("pusher") or {}
        actor = pusher.get("name") or pusher.get("username") or pusher.get("login") or sender
        return _push(
            p.get("ref", ""),
            p.get("before"),
            p.get("after"),
            p.get("commits") or [],
            repo.get("clone_url"),
            actor,
        )
    if event == "pull_request":
        pr = p.get("pull_request") or {}
        head, base = pr.get("head") or {}, pr.get("base") or {}
        return Trigger(
            kind="pull_request",
            repository=repo.get("clone_url"),
            ref=f"refs/pull/{pr.get('number')}/head",
            branch=head.get("ref"),
            sha=head.get("sha"),
            before=base.get("sha"),
            paths_known=False,
            actor=sender,
            pull_request={
                "number": pr.get("number") or p.get("number"),
                "action": p.get("action", ""),
                "base": base.get("ref", ""),
                "head": head.get("ref", ""),
                "head_sha": head.get("sha"),
            },
            fork=_other_repository(head, base),
        )
    if event == "release":
        release = p.get("release") or {}
        if p.get("action") not in ("published", "released", "created"):
            return Ignored(f"release {p.get('action')}")
        tag = release.get("tag_name")
        return Trigger(
            kind="release",
            repository=repo.get("clone_url"),
            ref=f"refs/tags/{tag}",
            tag=tag,
            paths_known=False,
            actor=sender,
        )
    return Ignored(f"'{event}' events start nothing")


def _gitlab(event: str, p: dict[str, Any]) -> Trigger | Ignored:
    project = p.get("project") or p.get("repository") or {}
    url = project.get("git_http_url")
    if event in ("Push Hook", "Tag Push Hook"):
        return _push(
            p.get("ref", ""),
            p.get("before"),
            p.get("checkout_sha") or p.get("after"),
            p.get("commits") or [],
            url,
            p.get("user_username"),
        )
    if event == "Merge Request Hook":
        attrs = p.get("object_attributes") or {}
        sha = (attrs.get("last_commit") or {}).get("id")
        action = GITLAB_ACTIONS.get(attrs.get("action", ""), attrs.get("action", ""))
        source = (attrs.get("source") or {}).get("git_http_url") or url
        source_id = attrs.get("source_project_id")
        return Trigger(
            kind="pull_request",
            repository=source,
            ref=f"refs/heads/{attrs.get('source_branch')}",
            branch=attrs.get("source_branch"),
            sha=sha,
            paths_known=False,
            actor=(p.get("user") or {}).get("username"),
            pull_request={
                "number": attrs.get("iid"),
                "action": action,
                "base": attrs.get("target_branch", ""),
                "head": attrs.get("source_branch", ""),
                "head_sha": sha,
            },
            # a merge request from a fork has the fork as its source project
            fork=source_id is None or source_id != attrs.get("target_project_id"),
        )
    return Ignored(f"'{event}' events start nothing")


def _bitbucket(event: str, p: dict[str, Any]) -> Trigger | Ignored:
    repo = p.get("repository") or {}
    actor = (p.get("actor") or {}).get("display_name") or (p.get("actor") or {}).get("name")
    if event == "repo:push":  # Bitbucket Cloud
        url = f"https://bitbucket.org/{repo['full_name']}.git" if repo.get("full_name") else None
        changes = (p.get("push") or {}).get("changes") or []
        change = changes[0] if changes else {}
        new = change.get("new")
        if change.get("closed") or not new:
            return Ignored("a branch or tag was deleted")
        full = ("refs/tags/" if new.get("type") == "tag" else "refs/heads/") + new.get("name", "")
        old = ((change.get("old") or {}).get("target") or {}).get("hash")
        trigger = _push(full, old, (new.get("target") or {}).get("hash"), [], url, actor)
        if isinstance(trigger, Trigger):
            trigger.paths_known = False  # Bitbucket sends no file lists
        return trigger
    if event == "repo:refs_changed":  # Bitbucket Data Center
        changes = p.get("changes") or []
        change = changes[0] if changes else {}
        if change.get("type") == "DELETE":
            return Ignored(f"{change.get('refId')} was deleted")
        clones = ((repo.get("links") or {}).get("clone")) or []
        url = next((c.get("href") for c in clones if c.get("name") == "http"), None)
        trigger = _push(
            change.get("refId", ""), change.get("fromHash"), change.get("toHash"), [], url, actor
        )
        if isinstance(trigger, Trigger):
            trigger.paths_known = False
        return trigger
    return Ignored(f"'{event}' events start nothing")


def normalise(host: str, event: str, payload: dict[str, Any]) -> Trigger | Ignored:
    if event in ("ping", "diagnostics:ping"):  # GitHub's ping, Bitbucket's test button
        return Ignored("ping")
    if host in ("github", "gitea"):
        found = _github_like(event, payload)
    elif host == "gitlab":
        found = _gitlab(event, payload)
    elif host == "bitbucket":
        found = _bitbucket(event, payload)
    else:
        return Trigger(kind="webhook", paths_known=False)
    if isinstance(found, Trigger) and found.repository is not None:
        # a payload never names a repository on the agent's own disk
        problem = url_problem(found.repository, allow_local=False)
        found.problems = [problem] if problem else []
    return found
