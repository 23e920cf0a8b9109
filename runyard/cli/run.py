"""`runyard run PIPELINE`: start a run on the server, and with --watch follow it."""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any
from urllib.parse import quote

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runyard.cli import config
from runyard.cli.client import Api, ApiFailed
from runyard.cli.output import COLOURS
from runyard.cli.pipeline import parse_inputs
from schemas.status import Status

POLL = 0.25
APPEAR = 30.0  # seconds to wait for the dispatcher to create the run
LOG_SETTLE = 5.0  # seconds to wait for a finished step's last log lines
LIVE_LINES = 8  # log lines under the live table


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
    project = config.project(project)
    api = Api()
    path = f"/api/projects/{quote(project)}/pipelines/{quote(pipeline_name)}/runs"
    started = api.call("POST", path, json={"inputs": parse_inputs(inputs), "ref": ref})
    run_id = started["run"]
    click.echo(f"run {run_id} started")
    if not watch:
        return
    final = live_view(api, run_id) if sys.stdout.isatty() else follow(api, run_id, click.echo)
    raise SystemExit(0 if final["status"] == Status.SUCCESS else 1)


def follow(api: Api, run_id: str, echo: Any, logs: bool = True) -> dict[str, Any]:
    """Print status changes of jobs and steps, and (with `logs`) each step's log lines as
    they come, until the run ends; returns the final run."""
    seen: dict[str, str] = {}
    tails: dict[str, LogTail] = {}
    deadline = time.monotonic() + APPEAR
    while True:
        current = _current(api, run_id, deadline)
        if current is None:
            continue
        final = Status(current["status"]).final
        for job in current["jobs"]:
            for past in job.get("attempts", []):  # a retry: the attempt before ended so
                line = f"{job['name']}: attempt {past['attempt']} {past['status']}"
                _once(seen, f"{job['key']}#{past['attempt']}", line, echo)
            for step in job["steps"]:
                if step["status"] in (Status.QUEUED, Status.SKIPPED):
                    continue
                where = f"{job['key']}#{job['attempt']}/{step['id']}"  # a log per attempt
                if step["status"] == Status.RUNNING:
                    _once(seen, where, _step_line(job, step), echo)
                if logs:
                    tail = tails.setdefault(
                        where, LogTail(api, run_id, job["key"], step["id"], job["attempt"])
                    )
                    tail.show(echo, wait=final or Status(step["status"]).final)
                if Status(step["status"]).final:
                    _once(seen, where, _step_line(job, step), echo)
            if Status(job["status"]).final:
                _once(seen, job["key"], f"{job['name']}: {job['status']}", echo)
        if final:
            echo(f"run #{current['number']} {current['status']}")
            return dict(current)
        time.sleep(POLL)


def _current(api: Api, run_id: str, deadline: float) -> dict[str, Any] | None:
    """The run, or None (after a pause) while it does not exist yet."""
    try:
        found: dict[str, Any] = api.call("GET", f"/api/runs/{run_id}")
    except ApiFailed as exc:
        if exc.status != 404 or time.monotonic() > deadline:
            raise
        time.sleep(POLL)
        return None
    return found


def live_view(api: Api, run_id: str) -> dict[str, Any]:
    """On a terminal: a table of jobs and steps redrawn in place, with the last lines of
    the running steps' logs under it, until the run ends."""
    tails: dict[str, LogTail] = {}
    recent: deque[str] = deque(maxlen=LIVE_LINES)
    deadline = time.monotonic() + APPEAR
    with Live(refresh_per_second=8, transient=False) as live:
        while True:
            current = _current(api, run_id, deadline)
            if current is None:
                continue
            table = Table(
                box=None, title=f"{current['pipeline']} #{current['number']}", title_justify="left"
            )
            for heading in ("job / step", "status", "time", "outputs"):
                table.add_column(heading)
            for job in current["jobs"]:
                table.add_row(
                    Text(job["name"], style="bold"), _styled(job["status"]), _took(job), ""
                )
                for step in job["steps"]:
                    table.add_row(
                        f"  {step['name']}",
                        _styled(step["status"]),
                        _took(step),
                        " ".join(f"{k}={v}" for k, v in step["outputs"].items()),
                    )
                    if step["status"] == Status.RUNNING:
                        where = f"{job['key']}#{job['attempt']}/{step['id']}"
                        tail = tails.setdefault(
                            where, LogTail(api, run_id, job["key"], step["id"], job["attempt"])
                        )
                        tail.show(lambda line: recent.append(line.strip()))
            final = Status(current["status"]).final
            status = _styled(current["status"])
            live.update(
                Group(table, Text("\n".join(recent), style="dim"), Text.assemble("run: ", status))
            )
            if final:
                return current
            time.sleep(POLL)


def _styled(status: str) -> Text:
    return Text(status, style=COLOURS.get(status, ""))


def _took(item: dict[str, Any]) -> str:
    start, end = item.get("started_at"), item.get("finished_at")
    return f"{end - start:.1f}s" if start and end else ""


def _once(seen: dict[str, str], key: str, line: str, echo: Any) -> None:
    if seen.get(key) != line:
        seen[key] = line
        echo(line)


def _step_line(job: dict[str, Any], step: dict[str, Any]) -> str:
    text = f"{job['name']} / {step['name']}: {step['status']}"
    if step["outputs"]:
        text += "  " + " ".join(f"{k} = {v}" for k, v in step["outputs"].items())
    if step.get("error") and step["status"] != Status.SUCCESS:
        text += f"  ({step['error']})"
    return text


class LogTail:
    """The next lines of one step's log, read through the API page by page."""

    def __init__(self, api: Api, run: str, job: str, step: str, attempt: int = 1) -> None:
        self.api = api
        self.path = f"/api/runs/{run}/jobs/{quote(job)}/steps/{quote(step)}/logs"
        self.attempt = attempt
        self.next = 1
        self.ended = False

    def show(self, echo: Any, wait: bool = False) -> None:
        """Print new lines; with `wait`, until the whole log is stored (a few seconds at
        most: the collector may be a moment behind the step's result)."""
        deadline = time.monotonic() + (LOG_SETTLE if wait else 0)
        while not self.ended:
            page = self.api.call(
                "GET", self.path, params={"from": self.next, "attempt": self.attempt}
            )
            for line in page["lines"]:
                echo(f"    {line['text']}")
            self.next, self.ended = page["next"], page["ended"]
            if page["lines"]:
                continue
            if time.monotonic() >= deadline:
                return
            time.sleep(POLL / 2)
