"""`runyard run PIPELINE`: start a run on the server, and with --watch follow it."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import click

from runyard.cli import config
from runyard.cli.client import Api, ApiFailed
from runyard.cli.pipeline import parse_inputs
from schemas.status import Status

POLL = 0.25
APPEAR = 30.0  # seconds to wait for the dispatcher to create the run


@click.command()
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--project", "-p", default=None, help="default: the project of `runyard up`")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="a run input (JSON values are parsed: n=3 is a number)",
)
@click.option("--ref", default=None, help="git ref to run the pipeline's repository at")
@click.option("--watch", is_flag=True, help="follow the run; exit 1 unless it succeeds")
def run(
    pipeline_name: str, project: str | None, inputs: tuple[str, ...], ref: str | None, watch: bool
) -> None:
    """Start a run of PIPELINE on the server.

    \b
    Example:
      runyard run "DataTorch add" --input a=1 --watch
    """
    project = project or config.load().get("project")
    if not project:
        raise click.UsageError("say which project with --project")
    api = Api()
    path = f"/api/projects/{quote(project)}/pipelines/{quote(pipeline_name)}/runs"
    started = api.call("POST", path, json={"inputs": parse_inputs(inputs), "ref": ref})
    run_id = started["run"]
    click.echo(f"run {run_id} started")
    if not watch:
        return
    final = follow(api, run_id, click.echo)
    raise SystemExit(0 if final["status"] == Status.SUCCESS else 1)


def follow(api: Api, run_id: str, echo: Any) -> dict[str, Any]:
    """Print each job's and step's status changes until the run ends; the final run."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + APPEAR
    while True:
        try:
            current = api.call("GET", f"/api/runs/{run_id}")
        except ApiFailed as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(POLL)
            continue
        for line_key, line in _lines(current):
            if seen.get(line_key) != line:
                seen[line_key] = line
                echo(line)
        if Status(current["status"]).final:
            echo(f"run #{current['number']} {current['status']}")
            return dict(current)
        time.sleep(POLL)


def _lines(current: dict[str, Any]) -> list[tuple[str, str]]:
    lines = []
    for job in current["jobs"]:
        for step in job["steps"]:
            if step["status"] == Status.QUEUED:
                continue
            text = f"{job['name']} / {step['name']}: {step['status']}"
            if step["outputs"]:
                text += "  " + " ".join(f"{k} = {v}" for k, v in step["outputs"].items())
            if step.get("error") and step["status"] != Status.SUCCESS:
                text += f"  ({step['error']})"
            lines.append((f"{job['key']}/{step['index']}", text))
        if Status(job["status"]).final:
            lines.append((job["key"], f"{job['name']}: {job['status']}"))
    return lines
