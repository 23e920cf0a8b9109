"""`runyard pipeline …`: validate (and, later, create/update/run) pipeline files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from runyard.pipeline.validate import validate_file
from schemas.status import Status


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


def parse_inputs(pairs: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{pair}' is not KEY=VALUE", param_hint="--input")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return values


@pipeline.command("run")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="a run input (JSON values are parsed: 3, true, [1,2])",
)
@click.option(
    "--event",
    "event_file",
    type=click.Path(path_type=Path, exists=True),
    help="a JSON file used as the trigger event (${{ event.* }})",
)
@click.option("--job", help="run only this job (its needs are not run)")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(),
    show_default=True,
    help="where jobs run when the pipeline names no repository",
)
def run_command(
    file: Path, inputs: tuple[str, ...], event_file: Path | None, job: str | None, workdir: Path
) -> None:
    """Run a pipeline on this machine, with no server (exit 1 if the run fails).

    \b
    Example:
      runyard pipeline run examples/dag.yaml --input epochs=3
    """
    from agent.local import run_file  # the agent's runners load only for this command

    result = validate_file(file)
    for problem in result.problems:
        click.echo(str(problem), err=True)
    if result.pipeline is None:
        raise SystemExit(1)
    event: dict[str, Any] = {}
    if event_file:
        try:
            event = json.loads(event_file.read_text())
        except ValueError as exc:
            raise click.BadParameter(
                f"{event_file} is not JSON: {exc}", param_hint="--event"
            ) from None
    if job and job not in result.pipeline.jobs:
        raise click.BadParameter(f"no job '{job}' in {file}", param_hint="--job")
    state = run_file(
        result.pipeline,
        workdir=workdir.resolve(),
        inputs=parse_inputs(inputs),
        event=event,
        job=job,
    )
    raise SystemExit(0 if state.status == Status.SUCCESS else 1)
