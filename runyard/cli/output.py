"""Listings for people and for scripts: a rich table on a terminal, tab-separated
plain text when piped, JSON with `--json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

JSON = click.option("--json", "as_json", is_flag=True, help="print JSON (for scripts)")


def when(value: float | None) -> str:
    if not value:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def took(start: float | None, end: float | None) -> str:
    return f"{end - start:.2f}s" if start and end else "-"


def listing(
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
    as_json: bool,
    raw: Any = None,
    empty: str = "nothing yet",
) -> None:
    """`columns`: (key in each row, heading)."""
    if as_json:
        click.echo(json.dumps(raw if raw is not None else rows, indent=2, default=str))
        return
    if not rows:
        click.echo(empty)
        return
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for _, heading in columns:
            table.add_column(heading)
        for row in rows:
            table.add_row(*(_cell(row.get(key)) for key, _ in columns))
        Console().print(table)
        return
    click.echo("\t".join(heading for _, heading in columns))
    for row in rows:
        click.echo("\t".join(str(row.get(key, "")) for key, _ in columns))


# statuses (and agents' states) in colour on a terminal
COLOURS = {
    "success": "green",
    "failure": "red",
    "running": "yellow",
    "cancelled": "magenta",
    "timed-out": "red",
    "agent-lost": "red",
    "interrupted": "red",
    "online": "green",
    "offline": "red",
}


def _cell(value: Any) -> str:
    text = str(value) if value is not None else "-"
    colour = COLOURS.get(text)
    return f"[{colour}]{text}[/{colour}]" if colour else text.replace("[", r"\[")
