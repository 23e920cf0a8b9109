"""`runyard logs RUN` and `runyard artifacts RUN`: what a run printed and produced."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import orjson

from runyard.cli.client import Api, ApiFailed
from schemas.status import Status


def _steps(
    run: dict[str, Any], job: str | None, step: str | None, attempt: int | None
) -> list[tuple[str, str, int, bool]]:
    """(job key, step id, attempt, more than one attempt) of each log to print, earlier
    attempts first: every attempt of a step has a log of its own."""
    found = []
    for j in run["jobs"]:
        if job not in (None, j["key"], j["job_id"]):
            continue
        tries = [*j.get("attempts", []), {"attempt": j["attempt"], "steps": j["steps"]}]
        for a in tries:
            if attempt not in (None, a["attempt"]):
                continue
            found += [
                (j["key"], s["id"], a["attempt"], len(tries) > 1)
                for s in a["steps"]
                if step in (None, s["id"]) and s["status"] not in (Status.SKIPPED, Status.QUEUED)
            ]
    if not found:
        raise click.ClickException("no step of the run matches --job/--step/--attempt")
    return found


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--job", default=None, help="only this job (its key, e.g. train~2, or id)")
@click.option("--step", default=None, help="only this step (its id)")
@click.option("--attempt", type=int, default=None, help="only this attempt (default: all)")
@click.option("--follow", "-f", is_flag=True, help="keep printing lines until the steps end")
def logs(run_id: str, job: str | None, step: str | None, attempt: int | None, follow: bool) -> None:
    """Print the log lines of a run's steps, in order; a job that ran more than once
    (a retry) shows each attempt's log on its own.

    \b
    Example:
      runyard logs 8eac393d82b1fceeee27 --job build --follow
    """
    api = Api()
    run = api.call("GET", f"/api/runs/{run_id}")
    current = {j["key"]: j["attempt"] for j in run["jobs"]}
    for job_key, step_id, number, several in _steps(run, job, step, attempt):
        path = f"/api/runs/{run_id}/jobs/{quote(job_key)}/steps/{quote(step_id)}/logs"
        which = f" (attempt {number})" if several else ""
        click.secho(f"── {job_key} / {step_id}{which}", bold=True)
        if follow and number == current[job_key]:
            _stream(api, f"{path}/events?attempt={number}")
        else:
            _pages(api, path, number)


def _pages(api: Api, path: str, attempt: int) -> None:
    start = 1
    while True:
        page = api.call("GET", path, params={"from": start, "attempt": attempt})
        for line in page["lines"]:
            click.echo(line["text"])
        if not page["lines"] or page["ended"]:
            return
        start = page["next"]


def _stream(api: Api, path: str) -> None:
    """Server-Sent Events: every line once, then `end` when the step's log is whole."""
    with api.http.stream("GET", path, timeout=None) as response:
        if response.status_code >= 400:
            response.read()
            raise ApiFailed(response.status_code, response.json())
        event = "message"
        for raw in response.iter_lines():
            if raw.startswith("event: "):
                event = raw.removeprefix("event: ")
            elif raw.startswith("data: "):
                if event == "end":
                    return
                click.echo(orjson.loads(raw.removeprefix("data: "))["text"])
            elif raw == "":
                event = "message"


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--download",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="save every file under DIR/<job>/<artifact>/<path>",
)
def artifacts(run_id: str, directory: Path | None) -> None:
    """List a run's artifacts, or download them (each file's SHA-256 is checked).

    \b
    Example:
      runyard artifacts 8eac393d82b1fceeee27 --download out/
    """
    api = Api()
    found = api.call("GET", f"/api/runs/{run_id}/artifacts")
    if not found:
        click.echo("no artifacts")
        return
    for item in found:
        click.echo(
            f"{item['job']}/{item['artifact']}/{item['path']}  {item['size']} bytes  "
            f"sha256:{item['sha256'][:16]}"
        )
        if directory is not None:
            _download(api, run_id, item, directory)


def _download(api: Api, run_id: str, item: dict[str, Any], directory: Path) -> None:
    rel = f"{item['job']}/{item['artifact']}/{item['path']}"
    target = (directory / rel).resolve()
    if not target.is_relative_to(directory.resolve()):
        raise click.ClickException(f"refusing to write outside {directory}: {rel}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    url = f"/api/runs/{run_id}/artifacts/{quote(rel)}"
    with api.http.stream("GET", url, timeout=None) as response, target.open("wb") as out:
        if response.status_code >= 400:
            response.read()
            raise ApiFailed(response.status_code, response.json())
        for chunk in response.iter_bytes():
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != item["sha256"]:
        target.unlink()
        raise click.ClickException(f"{rel}: the download's SHA-256 does not match; removed")
