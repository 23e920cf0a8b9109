"""Branch, tag and path globs: `*` (within one path segment), `**` (any depth), `?`,
`[abc]`, and a leading `!` that excludes what earlier patterns included.

Pure; the linter reports bad patterns, the dispatcher matches events with `matches`.
"""

from __future__ import annotations

import re
from functools import lru_cache


class GlobError(ValueError):
    pass


def _translate_segment(segment: str, pattern: str) -> str:
    if "**" in segment and segment != "**":
        raise GlobError(f"glob '{pattern}': '**' must be a whole path segment, as in 'a/**/b'")
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = segment.find("]", i + 2)
            if end == -1:
                raise GlobError(f"glob '{pattern}': '[' is never closed with ']'")
            body = segment[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Regex for one pattern (without its `!`); raises `GlobError` when malformed."""
    body = pattern[1:] if pattern.startswith("!") else pattern
    if not body:
        raise GlobError(f"glob '{pattern}' is empty")
    parts: list[str] = []
    segments = body.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            parts.append(".*" if last else "(?:.*/)?")
        else:
            parts.append(_translate_segment(segment, pattern) + ("" if last else "/"))
    return re.compile("".join(parts) + r"\Z")


def matches(patterns: list[str], value: str) -> bool:
    """Last matching pattern wins; a list of only negations starts from 'everything'."""
    result = all(p.startswith("!") for p in patterns) and bool(patterns)
    for pattern in patterns:
        if compile_glob(pattern).match(value):
            result = not pattern.startswith("!")
    return result
