"""The pure checks on clone URLs and refs: tables of what passes and what is refused, and
properties over any text (a ref we pass, git passes too; nothing refused ever raises)."""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.git_inputs import REMOTE_SCHEMES, is_commit, ref_problem, url_problem

SHA1 = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"

GOOD_URLS = [
    "https://github.com/Codertocat/Hello-World.git",
    "http://localhost:3000/gitea/webhooks.git",  # a self-hosted Gitea's clone_url
    "ssh://git@127.0.0.1:2200/Test-CI/multi-line-secrets.git",
    "git://example.com/repo.git",
    "git@github.com:acme/detector.git",
    "HTTPS://Example.com/x",
]

BAD_URLS = [
    ("--upload-pack=touch /tmp/x;", "starts with '-'"),
    ("-c core.sshCommand=x", "starts with '-'"),
    ("ext::sh -c touch% /tmp/x", "'ext::'"),
    ("fd::7", "'fd::'"),
    ("https::example.com/x", "remote helper"),
    ("foo://example.com/x", "the scheme 'foo'"),
    ("ftp://example.com/x", "the scheme 'ftp'"),
    ("ssh://-oProxyCommand=touch%20x/y", "host starts with '-'"),
    ("ssh://%2DoProxyCommand=x@host/y", "host starts with '-'"),
    ("-oProxyCommand=x:y", "starts with '-'"),
    ("git@-oProxyCommand=x:y", "host starts with '-'"),
    ("https:///nohost", "names no host"),
    ("https://example.com/x\nhost=evil", "control character"),
    ("file:///srv/git/x.git", "RUNYARD_ALLOW_FILE_URLS=1"),
    ("/srv/git/x.git", "a local path"),
    ("../other-job/.git", "a local path"),
    ("", "empty"),
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_remote_urls_pass(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_refused_urls_say_which_and_why(url: str, why: str) -> None:
    problem = url_problem(url)
    assert problem is not None
    assert problem.startswith(f"clone URL {url!r} is refused: ")
    assert why in problem


@pytest.mark.parametrize("url", ["file:///srv/git/x.git", "/srv/git/x.git", "./x"])
def test_local_repositories_only_when_allowed(url: str) -> None:
    assert url_problem(url, allow_local=True) is None


@pytest.mark.parametrize("url", ["--upload-pack=x", "ext::sh", "fd::1", "foo://x"])
def test_allowing_local_allows_nothing_else(url: str) -> None:
    assert url_problem(url, allow_local=True) is not None


@pytest.mark.parametrize(
    # `+main` is an ordinary name to git once it comes after `--`
    "ref",
    ["main", "HEAD", "v1", "release/2.0", "refs/pull/2/head", "feature/ä", "+main", SHA1],
)
def test_refs_pass(ref: str) -> None:
    assert ref_problem(ref) is None


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("--upload-pack=touch /tmp/x", "starts with '-'"),
        ("-b", "starts with '-'"),
        ("main..evil", "'..'"),
        ("a b", "' '"),
        ("a\tb", "'\\t'"),
        ("main\n", "'\\n'"),
        ("main:refs/heads/x", "':'"),
        ("v1^{}", "'^'"),
        ("a~1", "'~'"),
        ("a?", "'?'"),
        ("a*", "'*'"),
        ("a[", "'['"),
        ("a\\b", "'\\\\'"),
        ("a@{1}", "'@{'"),
        ("@", "'@'"),
        ("/main", "empty part"),
        ("main/", "empty part"),
        ("a//b", "empty part"),
        (".hidden", "starting with '.'"),
        ("refs/.x", "starting with '.'"),
        ("main.lock", ".lock"),
        ("main.", "end with '.'"),
        ("", "empty"),
    ],
)
def test_refused_refs_say_which_and_why(ref: str, why: str) -> None:
    problem = ref_problem(ref)
    assert problem is not None
    assert problem.startswith(f"ref {ref!r} is refused: ")
    assert why in problem


def test_commits_are_full_lowercase_hex() -> None:
    assert is_commit(SHA1) and is_commit("a" * 64)
    assert not is_commit(SHA1[:12]) and not is_commit(SHA1.upper())


# --- properties over any text -------------------------------------------------------

# the characters git's rules are about, and some ordinary ones
REF_ALPHABET = st.sampled_from([*"ab/.-_@{}~^:?*[\\ \t\n\x7fé0", "lock"])


def _git_accepts(ref: str) -> bool:
    done = subprocess.run(
        ["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True, check=False
    )
    return done.returncode == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(REF_ALPHABET, max_size=12).map("".join))
def test_every_ref_we_pass_git_passes_too(ref: str) -> None:
    if ref_problem(ref) is None:
        assert _git_accepts(ref), ref
        assert not ref.startswith("-")


@given(st.text(), st.booleans())
def test_any_text_gets_an_answer_and_options_never_pass(text: str, allow_local: bool) -> None:
    url, ref = url_problem(text, allow_local), ref_problem(text)
    if text.startswith("-"):
        assert url is not None and ref is not None
    if url is None:
        assert not any(ord(c) < 32 or ord(c) == 127 for c in text)
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
        allowed = (*REMOTE_SCHEMES, *(["file"] if allow_local else []))
        assert scheme is None or scheme[1].lower() in allowed


@given(st.sampled_from(["ext", "fd", "foo", "git-remote-x", "a+b.c-d"]), st.text())
def test_helper_transports_never_pass(helper: str, rest: str) -> None:
    assert url_problem(f"{helper}::{rest}", allow_local=True) is not None
