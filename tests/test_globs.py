from __future__ import annotations

import pytest

from runyard.globs import GlobError, compile_glob, matches

CASES = [
    (["main"], "main", True),
    (["main"], "mainline", False),
    (["release/*"], "release/1.0", True),
    (["release/*"], "release/1.0/hotfix", False),
    (["release/**"], "release/1.0/hotfix", True),
    (["model/**"], "model/a/b.py", True),
    (["model/**"], "modelx/a.py", False),
    (["**/*.md"], "README.md", True),
    (["**/*.md"], "docs/a/b.md", True),
    (["v*"], "v1.2.3", True),
    (["v?"], "v1", True),
    (["v?"], "v10", False),
    (["v[0-9]*"], "v1.0", True),
    (["v[!0-9]*"], "v1.0", False),
    (["model/**", "!model/**/*.md"], "model/x/readme.md", False),
    (["model/**", "!model/**/*.md"], "model/x/train.py", True),
    (["!docs/**"], "src/a.py", True),
    (["!docs/**"], "docs/a.md", False),
    ([], "anything", False),
    (["a.b"], "aXb", False),
]


@pytest.mark.parametrize(("patterns", "value", "expected"), CASES)
def test_matches(patterns: list[str], value: str, expected: bool) -> None:
    assert matches(patterns, value) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "glob '' is empty"),
        ("!", "glob '!' is empty"),
        ("a[bc", "glob 'a[bc': '[' is never closed with ']'"),
        ("src/a**", "glob 'src/a**': '**' must be a whole path segment, as in 'a/**/b'"),
    ],
)
def test_bad_globs(pattern: str, message: str) -> None:
    with pytest.raises(GlobError) as info:
        compile_glob(pattern)
    assert str(info.value) == message
