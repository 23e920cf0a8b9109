"""The few git operations the agent needs, run as processes (no library: the user's git,
with its credentials helpers and proxies, is what they expect to be used).

URLs and refs come from webhook payloads, pipeline files and action references, so each
is checked (`runyard.git_inputs`) and then passed after `--`, where git reads operands
only; and git may use only the transports those checks allow, whatever a URL asks for."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from runyard.git_inputs import (
    LOCAL_SCHEME,
    REMOTE_SCHEMES,
    is_commit,
    ref_problem,
    url_problem,
)
from runyard.settings import AgentSettings

GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ADVICE": "0",
    # a transfer slower than 1 KB/s for a minute is given up (a stalled host would
    # otherwise hold the job, its slot and its cancel for as long as TCP keeps it open)
    "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
    "GIT_HTTP_LOW_SPEED_TIME": "60",
}


class GitError(RuntimeError):
    pass


class GitFailed(GitError):
    """git itself failed (a host it cannot reach, a repository that is not there), as
    opposed to a URL or ref refused before git ran."""


# RUNYARD_ALLOW_FILE_URLS of the agent process, from its settings at its start (`use`)
_allow_local: bool | None = None


def use(settings: AgentSettings) -> None:
    """Take the agent process's settings, read once at its start."""
    global _allow_local
    _allow_local = settings.allow_file_urls


def allow_local() -> bool:
    """Local repositories only when the operator says so (tests, one-machine setups);
    where no agent `use`d its settings (local mode, tests), the environment's now."""
    if _allow_local is None:
        return AgentSettings.from_env().allow_file_urls
    return _allow_local


def _environment() -> dict[str, str]:
    """The agent's environment for git, with git's own allow-list of transports set to
    ours: it overrides `protocol.*.allow` config, so `ext::`, `fd::` and other helpers
    stay off even if a check missed a spelling (and an inherited value is replaced)."""
    protocols = [*REMOTE_SCHEMES, *([LOCAL_SCHEME] if allow_local() else [])]
    return {**os.environ, **GIT_ENV, "GIT_ALLOW_PROTOCOL": ":".join(protocols)}


def _check(url: str, ref: str | None = None) -> None:
    """Raise a GitError naming `url` or `ref` if git must not be given it."""
    problem = url_problem(url, allow_local()) or (ref_problem(ref) if ref is not None else None)
    if problem:
        raise GitError(problem)


async def git(*args: str, operands: tuple[str, ...] = (), cwd: Path | None = None) -> str:
    """`git <args> -- <operands>`: URLs and refs go after `--`, never among options."""
    argv = [*args, "--", *operands] if operands else list(args)
    proc = await asyncio.create_subprocess_exec(
        "git",
        *argv,
        cwd=cwd,
        env=_environment(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:  # the job ended (or the agent stops): git goes too
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if proc.returncode != 0:
        raise GitFailed(f"git {args[0]} failed: {said(err, proc.returncode)}")
    return out.decode().strip()


MAX_REASON = 2000  # characters of git's stderr kept in an error


def said(stderr: bytes, returncode: int | None) -> str:
    """Everything git wrote to stderr, as one paragraph: `fatal:` and `error:` dropped,
    each message after `; `, wrapped lines joined (git's "Please make sure you have the
    correct access rights / and the repository exists." is one sentence)."""
    text = ""
    for raw in stderr.decode(errors="replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        starts = line.startswith(("fatal: ", "error: ", "remote: ", "warning: ", "hint: "))
        line = line.removeprefix("fatal: ").removeprefix("error: ")
        gap = "; " if starts and text and not text.endswith((".", ":", ";")) else " "
        text = f"{text}{gap}{line}" if text else line
    text = text or f"exit status {returncode}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


async def resolve(url: str, ref: str | None) -> tuple[str, str]:
    """(ref to fetch, commit) for `ref` (tag, branch or commit; None: the default branch)."""
    _check(url, ref)
    if ref and is_commit(ref):
        return ref, ref
    wanted = ref or "HEAD"
    listing = await git("ls-remote", operands=(url, wanted, f"{wanted}^{{}}"))
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        refs[name] = sha
    for name in (f"refs/tags/{wanted}^{{}}", f"refs/tags/{wanted}", f"refs/heads/{wanted}", wanted):
        if name in refs:
            return name.removesuffix("^{}"), refs[name]
    raise GitError(f"'{wanted}' is not a tag, branch or commit of {url}")


async def fetch_checkout(url: str, ref: str, dest: Path) -> str:
    """Shallow-fetch `ref` (a name or a commit) from `url` into `dest`; the commit."""
    _check(url, ref)
    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / ".git").exists():
        await git("init", "--quiet", cwd=dest)
    await git("fetch", "--quiet", "--depth", "1", operands=(url, ref), cwd=dest)
    await git("checkout", "--quiet", "--force", "FETCH_HEAD", cwd=dest)
    return await git("rev-parse", "HEAD", cwd=dest)
