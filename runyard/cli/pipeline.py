"""`runyard pipeline …`: validate (and, later, create/update/run) pipeline files."""

from __future__ import annotations

from pathlib import Path

import click

from runyard.pipeline.validate import validate_file


@click.group()
def pipeline() -> None:
    """Work with pipeline files."""


@pipeline.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check pipeline files and print every problem as FILE:LINE:COLUMN: MESSAGE.

    Exits 1 when any file has a problem.

    \b
    Example:
      runyard pipeline validate examples/*.yaml
    """
    bad = 0
    for path in files:
        result = validate_file(path)
        for problem in result.problems:
            click.echo(str(problem))
        bad += not result.ok
    if bad:
        click.echo(f"{bad} of {len(files)} file(s) have problems", err=True)
        raise SystemExit(1)
    click.echo(f"{len(files)} file(s) valid", err=True)
