"""Hiding secrets in what a run shows: log lines, recorded step inputs and outputs.

Pure and light (no Jinja2): the agent masks log lines before they leave the machine,
the engine masks what it records. A secret gives itself away in more shapes than its
exact text, so each of these is replaced by `***` (docs/logs-artifacts.md, "Masking"):

- the value itself, however short;
- each line of a multi-line value, stripped, from MIN_PIECE characters on (a line such
  as `}` or `---` would otherwise blank every log it appears in);
- the base64 encodings of those (standard and URL-safe): whole with padding, in the
  lines `base64` (76 columns) and `openssl base64` (64) wrap it into, and, for each of
  the three alignments, the characters that only the secret's bytes decide, which
  also appear when it is encoded inside a longer text (as GitHub Actions does).

An Aho-Corasick automaton finds every shape of every secret in one pass over the text,
so masking costs about the same per line whether a step has one secret or hundreds.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from ahocorasick_rs import AhoCorasick

MASK = "***"
MIN_PIECE = 4  # shortest derived shape masked (a line of a secret, a base64 fragment)
WRAP_WIDTHS = (64, 76)
_URL_SAFE = str.maketrans("+/", "-_")


def _pieces(secret: str) -> set[str]:
    """The secret and, when it has several lines, each of them long enough to mask."""
    lines = [line.strip() for line in secret.splitlines() if line.strip()]
    if not lines:
        return set()  # masking blanks or newlines would wreck every log
    if len(lines) == 1:
        return {secret, lines[0]}
    return {secret, *(line for line in lines if len(line) >= MIN_PIECE)}


def _base64(data: bytes) -> set[str]:
    whole = base64.b64encode(data).decode()
    found = {whole}
    for width in WRAP_WIDTHS:
        found.update(whole[i : i + width] for i in range(0, len(whole), width))
    for offset in range(3):
        # `offset` bytes come before: skip the characters they share, and the last one
        # that shares bits with whatever follows
        text = base64.b64encode(bytes(offset) + data).decode()
        found.add(text[(8 * offset + 5) // 6 : 8 * (offset + len(data)) // 6])
    return found


def shapes(secret: str) -> set[str]:
    """Every string that gives `secret` away in a log."""
    found: set[str] = set()
    for piece in _pieces(secret):
        found.add(piece)
        for encoded in _base64(piece.encode()):
            found.update(s for s in (encoded, encoded.translate(_URL_SAFE)) if len(s) >= MIN_PIECE)
    return found


class Masker:
    """Replaces every shape of every secret with `***`. Overlapping finds are hidden as
    one, so a secret that contains or overlaps another is hidden whole."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._shapes: set[str] = set()
        # One automaton per group of shapes, groups ever smaller: a step that adds masks
        # one at a time (`::add-mask::`) costs O(n log n) building, not O(n²), and a line
        # is searched O(log n) times.
        self._groups: list[list[str]] = []
        self._searches: list[AhoCorasick] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        group = list(set().union(*map(shapes, secrets)) - self._shapes)
        if not group:
            return
        self._shapes.update(group)
        while self._groups and len(self._groups[-1]) <= len(group):
            group += self._groups.pop()
            self._searches.pop()
        self._groups.append(group)
        self._searches.append(AhoCorasick(group))

    def __call__(self, text: str) -> str:
        found: list[tuple[int, int, int]] = []
        for search in self._searches:
            found += search.find_matches_as_indexes(text, overlapping=True)
        if not found:
            return text
        parts: list[str] = []
        done = 0  # the text before this is kept or masked already
        for start, end in sorted((start, end) for _, start, end in found):
            if not parts or start > done:
                parts += (text[done:start], MASK)
            done = max(done, end)
        parts.append(text[done:])
        return "".join(parts)

    def data(self, value: Any) -> Any:
        """`value` with every string in it masked, keys too (step inputs and outputs)."""
        if not self._searches:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(v) for v in value]
        return value
