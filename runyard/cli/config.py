"""The CLI's login: server URL and API key in `$RUNYARD_CONFIG`, else
`$XDG_CONFIG_HOME/runyard/config.json` (mode 0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click


def path() -> Path:
    if env := os.environ.get("RUNYARD_CONFIG"):
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "runyard" / "config.json"


def load() -> dict[str, Any]:
    try:
        data = json.loads(path().read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(values: dict[str, Any]) -> Path:
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({**load(), **values}, out, indent=2)
    tmp.replace(target)
    return target


def forget(*keys: str) -> None:
    values = {k: v for k, v in load().items() if k not in keys}
    target = path()
    if target.exists():
        target.unlink()
    if values:
        save(values)


def project(given: str | None) -> str:
    """`--project`, else the project `runyard up` set."""
    found = given or load().get("project")
    if not found:
        raise click.UsageError("say which project with --project")
    return str(found)
