"""Step outputs: `::name::<json>` lines on stdout (DataTorch's protocol) and the file named
by `$RUNYARD_OUTPUT` (`name=value` lines, or `name<<DELIM` … `DELIM` for many lines)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^::([A-Za-z_][A-Za-z0-9_-]*)::(.*)$")


def parse_line(line: str) -> tuple[str, Any] | None:
    """The output a stdout line sets, if it is one; values are JSON, else plain text."""
    match = _LINE.match(line)
    if not match:
        return None
    raw = match.group(2)
    try:
        return match.group(1), json.loads(raw)
    except ValueError:
        return match.group(1), raw


def read_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    outputs: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        name, sep, value = line.partition("=")
        if "<<" in line and (not sep or "<<" in name):
            name, _, delimiter = line.partition("<<")
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            outputs[name.strip()] = "\n".join(body)
        elif sep:
            outputs[name.strip()] = value
        i += 1
    return outputs
