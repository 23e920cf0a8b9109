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
# Pull request actions as GitHub names them (the `types` of `triggers.pull_request`).
# Gitea and Forgejo (modules/structs/hook.go, HookIssueAction) spell two differently;
# `opened`, `closed`, `reopened` and `edited` are the same.
GITEA_ACTIONS = {
    "synchronized": "synchronize",
    "label_updated": "labeled",
    "label_cleared": "unlabeled",
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


def _digest(*parts: bytes) -> str:
    return "sha256-" + hashlib.sha256(b"\0".join(parts)).hexdigest()[:32]


def delivery_id(host: str, headers: Mapping[str, str], body: bytes) -> str:
    """The host's delivery id, or (for hosts that send none) a hash of what arrived, so
    a re-sent identical delivery is still recognised. An id longer than 128 characters,
    or with characters outside printable ASCII, is hashed as well."""
    given = first_header(headers, DELIVERY_HEADERS[host])
    if given:
        readable = len(given) <= 128 and given.isascii() and given.isprintable()
        return given if readable else _digest(given.encode(errors="replace"))
    return _digest(host.encode(), event_name(host, headers).encode(), body)


def event_id(
    host: str, headers: Mapping[str, str], body: bytes, project: str, pipeline: str | None
) -> str:
    """The trigger event's id (its `Nats-Msg-Id`): the delivery, and where it was sent.
    One delivery is one event for one project (and, for a generic hook, one pipeline):
    the same body sent to two projects' hooks is two events, a redelivery to the same
    hook is the same one."""
    target = project if pipeline is None else f"{project}/{pipeline}"
    if len(target) > 200 or not (target.isascii() and target.isprintable()):
        target = _digest(target.encode(errors="replace"))  # a header value: no CR or LF
    return f"{host}:{target}:{delivery_id(host, headers, body)}"


# Payloads are read defensively: a field of another type than the host documents (a
# signed sender's mistake, or a test of ours) counts as missing, never as an error.


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ref_parts(ref: str) -> tuple[str | None, str | None]:
    """(branch, tag) of a full ref."""
    if ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/"), None
    if ref.startswith("refs/tags/"):
        return None, ref.removeprefix("refs/tags/")
    return None, None


def _changed(commits: list[Any]) -> list[str]:
    paths: set[str] = set()
    for commit in commits:
        for key in ("added", "removed", "modified"):
            paths.update(p for p in _list(_obj(commit).get(key)) if isinstance(p, str))
    return sorted(paths)


def _push(
    ref: str,
    before: str | None,
    after: str | None,
    commits: list[Any],
    repository: str | None,
    actor: str | None,
) -> Trigger | Ignored:
    branch, tag = _ref_parts(ref)
    if after == ZERO_SHA:
        return Ignored(f"{ref} was deleted")
    if branch is None and tag is None:
        return Ignored(f"{ref} is neither a branch nor a tag")
    listed = not commits or any(
        k in c for c in map(_obj, commits) for k in ("added", "removed", "modified")
    )
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
    head_id = head.get("repo_id") or _obj(head.get("repo")).get("id")  # Gitea sends repo_id
    base_id = base.get("repo_id") or _obj(base.get("repo")).get("id")
    return head_id is None or head_id != base_id


def _github_like(event: str, p: dict[str, Any], actions: dict[str, str]) -> Trigger | Ignored:
    """GitHub, and Gitea/Forgejo, which send GitHub's shapes (`actions`: their names of
    pull request actions that GitHub spells differently)."""
    repo = _obj(p.get("repository"))
    sender = _text(_obj(p.get("sender")).get("login"))
    if event == "push":
        if p.get("deleted"):
            return Ignored(f"{_text(p.get('ref'))} was deleted")
        pusher = _obj(p.get("pusher"))
        names = (pusher.get(k) for k in ("name", "username", "login"))
        actor = next((n for n in names if n and isinstance(n, str)), sender)
        return _push(
            _text(p.get("ref")) or "",
            _text(p.get("before")),
            _text(p.get("after")),
            _list(p.get("commits")),
            _text(repo.get("clone_url")),
            actor,
        )
    if event == "pull_request":
        pr = _obj(p.get("pull_request"))
        head, base = _obj(pr.get("head")), _obj(pr.get("base"))
        number = _number(pr.get("number")) or _number(p.get("number"))
        action = _text(p.get("action")) or ""
        return Trigger(
            kind="pull_request",
            repository=_text(repo.get("clone_url")),
            ref=f"refs/pull/{number}/head",
            branch=_text(head.get("ref")),
            sha=_text(head.get("sha")),
            before=_text(base.get("sha")),
            paths_known=False,
            actor=sender,
            pull_request={
                "number": number or 0,
                "action": actions.get(action, action),
                "base": _text(base.get("ref")) or "",
                "head": _text(head.get("ref")) or "",
                "head_sha": _text(head.get("sha")),
            },
            fork=_other_repository(head, base),
        )
    if event == "release":
        done = _text(p.get("action"))
        if done not in ("published", "released", "created"):
            return Ignored(f"release {done}")
        tag = _text(_obj(p.get("release")).get("tag_name"))
        if not tag:
            return Ignored("a release without a tag")
        return Trigger(
            kind="release",
            repository=_text(repo.get("clone_url")),
            ref=f"refs/tags/{tag}",
            tag=tag,
            paths_known=False,
            actor=sender,
        )
    return Ignored(f"'{event}' events start nothing")


def _gitlab(event: str, p: dict[str, Any]) -> Trigger | Ignored:
    project = _obj(p.get("project")) or _obj(p.get("repository"))
    url = _text(project.get("git_http_url"))
    if event in ("Push Hook", "Tag Push Hook"):
        return _push(
            _text(p.get("ref")) or "",
            _text(p.get("before")),
            _text(p.get("checkout_sha")) or _text(p.get("after")),
            _list(p.get("commits")),
            url,
            _text(p.get("user_username")),
        )
    if event == "Merge Request Hook":
        attrs = _obj(p.get("object_attributes"))
        sha = _text(_obj(attrs.get("last_commit")).get("id"))
        action = _text(attrs.get("action")) or ""
        source = _text(_obj(attrs.get("source")).get("git_http_url")) or url
        source_id = attrs.get("source_project_id")
        branch = _text(attrs.get("source_branch"))
        return Trigger(
            kind="pull_request",
            repository=source,
            ref=f"refs/heads/{branch}",
            branch=branch,
            sha=sha,
            paths_known=False,
            actor=_text(_obj(p.get("user")).get("username")),
            pull_request={
                "number": _number(attrs.get("iid")) or 0,
                "action": GITLAB_ACTIONS.get(action, action),
                "base": _text(attrs.get("target_branch")) or "",
                "head": branch or "",
                "head_sha": sha,
            },
            # a merge request from a fork has the fork as its source project
            fork=source_id is None or source_id != attrs.get("target_project_id"),
        )
    return Ignored(f"'{event}' events start nothing")


def _bitbucket_cloud(p: dict[str, Any], actor: str | None) -> Trigger | Ignored:
    full_name = _text(_obj(p.get("repository")).get("full_name"))
    url = f"https://bitbucket.org/{full_name}.git" if full_name else None
    changes = _list(_obj(p.get("push")).get("changes"))
    change = _obj(changes[0]) if changes else {}
    new = _obj(change.get("new"))
    if change.get("closed") or not new:
        return Ignored("a branch or tag was deleted")
    prefix = "refs/tags/" if new.get("type") == "tag" else "refs/heads/"
    full = prefix + (_text(new.get("name")) or "")
    old = _text(_obj(_obj(change.get("old")).get("target")).get("hash"))
    return _push(full, old, _text(_obj(new.get("target")).get("hash")), [], url, actor)


def _bitbucket_datacenter(p: dict[str, Any], actor: str | None) -> Trigger | Ignored:
    changes = _list(p.get("changes"))
    change = _obj(changes[0]) if changes else {}
    if change.get("type") == "DELETE":
        return Ignored(f"{_text(change.get('refId'))} was deleted")
    clones = _list(_obj(_obj(p.get("repository")).get("links")).get("clone"))
    url = next((_text(c.get("href")) for c in map(_obj, clones) if c.get("name") == "http"), None)
    return _push(
        _text(change.get("refId")) or "",
        _text(change.get("fromHash")),
        _text(change.get("toHash")),
        [],
        url,
        actor,
    )


def _bitbucket(event: str, p: dict[str, Any]) -> Trigger | Ignored:
    who = _obj(p.get("actor"))
    actor = _text(who.get("display_name")) or _text(who.get("name"))
    if event == "repo:push":  # Bitbucket Cloud
        trigger = _bitbucket_cloud(p, actor)
    elif event == "repo:refs_changed":  # Bitbucket Data Center
        trigger = _bitbucket_datacenter(p, actor)
    else:
        return Ignored(f"'{event}' events start nothing")
    if isinstance(trigger, Trigger):
        trigger.paths_known = False  # Bitbucket sends no file lists
    return trigger


def normalise(host: str, event: str, payload: dict[str, Any]) -> Trigger | Ignored:
    if event in ("ping", "diagnostics:ping"):  # GitHub's ping, Bitbucket's test button
        return Ignored("ping")
    if host in ("github", "gitea"):
        found = _github_like(event, payload, GITEA_ACTIONS if host == "gitea" else {})
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
