"""git's failures in full: every line git wrote, as one paragraph, with the URL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent import git


def test_said_keeps_every_line() -> None:
    stderr = (
        b"remote: Repository not found.\nfatal: repository 'https://example.com/a/b/' not found\n"
    )
    assert git.said(stderr, 128) == (
        "remote: Repository not found. repository 'https://example.com/a/b/' not found"
    )
    refused = b"fatal: unable to access 'http://x/': Could not resolve host: x\nhint: a hint\n"
    assert git.said(refused, 128) == (
        "unable to access 'http://x/': Could not resolve host: x; hint: a hint"
    )
    ssh = (
        b"ERROR: Repository not found.\n"
        b"fatal: Could not read from remote repository.\n\n"
        b"Please make sure you have the correct access rights\n"
        b"and the repository exists.\n"
    )
    assert git.said(ssh, 128) == (
        "ERROR: Repository not found. Could not read from remote repository. Please make "
        "sure you have the correct access rights and the repository exists."
    )
    assert git.said(b"", 3) == "exit status 3"
    assert len(git.said(b"x" * 10_000, 1)) == git.MAX_REASON


def test_a_missing_repository_says_what_git_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNYARD_ALLOW_FILE_URLS", "1")
    missing = tmp_path / "nothing-here"
    with pytest.raises(git.GitFailed) as caught:
        asyncio.run(git.resolve(str(missing), "v1"))
    message = str(caught.value)
    assert message.startswith("git ls-remote failed: ")
    assert f"'{missing}' does not appear to be a git repository" in message
    assert "and the repository exists." in message  # the whole of it, not its last line
