"""Clone URLs and refs from outside (webhook payloads, pipeline files, action references)
are data for git, never options or transports (DESIGN.md §10). No I/O: the agent and the
trigger service share these checks.

Each check returns None, or a sentence naming the value and why git must not see it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# Transports git may use for a remote. Any other scheme makes git start a remote helper
# (`git-remote-<scheme>`), and `<helper>::<address>` names one outright (`ext::` runs a
# shell command, `fd::` talks to inherited file descriptors).
REMOTE_SCHEMES = ("https", "http", "ssh", "git")
# Local repositories (`file://` and paths) read the agent's own disk: only when allowed.
LOCAL_SCHEME = "file"
ALLOW_LOCAL_SETTING = "RUNYARD_ALLOW_FILE_URLS"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_HELPER = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)::")  # git's is_urlschemechar() spelling
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 and SHA-256 object names
# `git check-ref-format`: no control characters, space, ~ ^ : ? * [ or backslash.
_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def is_commit(ref: str) -> bool:
    return _COMMIT.fullmatch(ref) is not None


def url_problem(url: str, allow_local: bool = False) -> str | None:
    """Why git must not be given `url` as a remote, or None."""
    reason = _url_reason(url, allow_local)
    return f"clone URL {url!r} is refused: {reason}" if reason else None


def ref_problem(ref: str) -> str | None:
    """Why git must not be given `ref` as a tag, branch, ref or commit, or None."""
    reason = _ref_reason(ref)
    return f"ref {ref!r} is refused: {reason}" if reason else None


def _url_reason(url: str, allow_local: bool) -> str | None:
    if not url:
        return "it is empty"
    if url.startswith("-"):
        return "it starts with '-', so git would read it as an option"
    if _CONTROL.search(url):
        return "it holds a control character"
    if helper := _HELPER.match(url):
        return f"'{helper[1]}::' makes git run a remote helper program"
    if scheme := _SCHEME.match(url):
        return _scheme_reason(scheme[1].lower(), url[scheme.end() :], allow_local)
    colon, slash = url.find(":"), url.find("/")
    if colon > 0 and (slash < 0 or colon < slash):  # scp-like `[user@]host:path`, by ssh
        return _host_reason(url[:colon])
    return None if allow_local else _local_refused("a local path")


def _scheme_reason(scheme: str, rest: str, allow_local: bool) -> str | None:
    if scheme == LOCAL_SCHEME:
        return None if allow_local else _local_refused("a file:// URL")
    if scheme not in REMOTE_SCHEMES:
        allowed = ", ".join(REMOTE_SCHEMES)
        return f"the scheme '{scheme}' is not one of {allowed} (or user@host:path)"
    authority = rest.split("/", 1)[0]
    return _host_reason(authority) if authority else "it names no host"


def _host_reason(authority: str) -> str | None:
    """`[user@]host[:port]`: ssh would read a host or user starting with '-' as an option
    (CVE-2017-1000117), even percent-encoded."""
    decoded = unquote(authority)
    host = decoded.rpartition("@")[2]
    if not host:
        return "it names no host"
    if decoded.startswith("-") or host.startswith("-"):
        return "its host starts with '-', so ssh would read it as an option"
    if any(c.isspace() for c in decoded):
        return "its host holds whitespace"
    return None


def _local_refused(what: str) -> str:
    return f"it is {what}; agents clone local repositories only with {ALLOW_LOCAL_SETTING}=1"


def _ref_reason(ref: str) -> str | None:
    """`git check-ref-format --allow-onelevel`, and no leading '-'."""
    if not ref:
        return "it is empty"
    if is_commit(ref):
        return None
    if ref.startswith("-"):
        return "it starts with '-', so git would read it as an option"
    if bad := _REF_CHARS.search(ref):
        return f"git refs may not hold {bad[0]!r}"
    parts = ref.split("/")
    broken = (
        (".." in ref, "git refs may not hold '..'"),
        ("@{" in ref, "git refs may not hold '@{'"),
        (ref == "@", "git refs may not be '@'"),
        ("" in parts, "git refs may not have an empty part (a leading, trailing or double '/')"),
        (any(p.startswith(".") for p in parts), "git refs may not have a part starting with '.'"),
        (any(p.endswith(".lock") for p in parts), "git refs may not have a part ending in .lock"),
        (ref.endswith("."), "git refs may not end with '.'"),
    )
    return next((why for bad, why in broken if bad), None)
