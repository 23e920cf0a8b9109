"""The few git operations the agent needs, run as processes (no library: the user's git,
with its credentials helpers and proxies, is what they expect to be used)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ADVICE": "0"}


class GitError(RuntimeError):
    pass


async def git(*args: str, cwd: Path | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {args[0]} failed: {message[-1] if message else proc.returncode}")
    return out.decode().strip()


async def resolve(url: str, ref: str | None) -> tuple[str, str]:
    """(ref to fetch, commit) for `ref` (tag, branch or commit; None: the default branch)."""
    if ref and len(ref) == 40 and all(c in "0123456789abcdef" for c in ref):
        return ref, ref
    wanted = ref or "HEAD"
    listing = await git("ls-remote", url, wanted, f"{wanted}^{{}}")
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
    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / ".git").exists():
        await git("init", "--quiet", cwd=dest)
    await git("fetch", "--quiet", "--depth", "1", url, ref, cwd=dest)
    await git("checkout", "--quiet", "--force", "FETCH_HEAD", cwd=dest)
    return await git("rev-parse", "HEAD", cwd=dest)
