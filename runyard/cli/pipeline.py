"""`runyard pipeline …`: validate and run pipeline files here, or create, update, list
and show them on the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from runyard.cli import config
from runyard.cli.client import Api, ApiFailed
from runyard.cli.output import JSON, listing, when
from runyard.pipeline.validate import is_json, validate_file
from schemas.status import Status


@click.group()
def pipeline() -> None:
    """Pipeline files: check and run them here, or keep them on the server.

    \b
    Example:
      runyard pipeline validate train.yaml && runyard pipeline create train.yaml -p vision
    """


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


PROJECT = click.option("--project", "-p", default=None, help="default: that of `runyard up`")


def _send(file: Path, project: str, method: str, name: str | None = None) -> dict[str, Any]:
    body = {"source": file.read_text(), "format": "json" if is_json(file.name) else "yaml"}
    path = f"/api/projects/{quote(project)}/pipelines"
    if name is not None:
        path += f"/{quote(name)}"
    try:
        made: dict[str, Any] = Api().call(method, path, json=body)
    except ApiFailed as exc:
        for problem in exc.body.get("problems", []):
            click.echo(
                f"{file}:{problem['line']}:{problem['column']}: {problem['message']}", err=True
            )
        raise click.ClickException(str(exc.body.get("error"))) from None
    return made


@pipeline.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@PROJECT
def create(file: Path, project: str | None) -> None:
    """Create a pipeline on the server from a YAML or JSON file.

    \b
    Example:
      runyard pipeline create train.yaml -p vision
    """
    made = _send(file, config.project(project), "POST")
    click.echo(f"pipeline '{made['name']}' created (version {made['version']})")


@pipeline.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@PROJECT
def update(file: Path, project: str | None) -> None:
    """Save a new version of a pipeline (named by the file's `name`).

    \b
    Example:
      runyard pipeline update train.yaml -p vision
    """
    result = validate_file(file)
    if result.pipeline is None:
        for problem in result.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(1)
    made = _send(file, config.project(project), "PUT", result.pipeline.name)
    click.echo(f"pipeline '{made['name']}' updated (version {made['version']})")


@pipeline.command("list")
@PROJECT
@JSON
def list_(project: str | None, as_json: bool) -> None:
    """List a project's pipelines.

    \b
    Example:
      runyard pipeline list -p examples
    """
    found = Api().call("GET", f"/api/projects/{quote(config.project(project))}/pipelines")
    rows = [{**p, "updated": when(p["updated_at"])} for p in found]
    listing(
        rows,
        [
            ("name", "PIPELINE"),
            ("version", "VERSION"),
            ("format", "FORMAT"),
            ("updated", "UPDATED"),
        ],
        as_json,
        raw=found,
        empty="no pipelines yet",
    )


@pipeline.command()
@click.argument("name")
@PROJECT
@JSON
def show(name: str, project: str | None, as_json: bool) -> None:
    """A pipeline's source (and next scheduled times).

    \b
    Example:
      runyard pipeline show "Adding Numbers" -p examples
    """
    found = Api().call(
        "GET", f"/api/projects/{quote(config.project(project))}/pipelines/{quote(name)}"
    )
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"# {found['name']} (version {found['version']})")
    for schedule in found.get("schedules", []):
        click.echo(f"# next run of '{schedule['cron']}': {schedule['next']}")
    click.echo(found["source"].rstrip("\n"))
