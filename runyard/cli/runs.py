"""`runyard runs list|show|cancel|rerun`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from runyard.cli import config
from runyard.cli.client import Api
from runyard.cli.output import JSON, listing, took, when


@click.group()
def runs() -> None:
    """Runs on the server: history, details, cancel, re-run.

    \b
    Example:
      runyard runs list "Adding Numbers" -p examples
    """


@runs.command("list")
@click.argument("pipeline_name", metavar="PIPELINE")
@click.option("--project", "-p", default=None)
@click.option("--limit", default=20, show_default=True)
@JSON
def list_(pipeline_name: str, project: str | None, limit: int, as_json: bool) -> None:
    """A pipeline's runs, newest first.

    \b
    Example:
      runyard runs list "Adding Numbers" -p examples
    """
    path = f"/api/projects/{quote(config.project(project))}/pipelines/{quote(pipeline_name)}/runs"
    found = Api().call("GET", path, params={"limit": limit})
    rows = [
        {**r, "when": when(r["created_at"]), "took": took(r["started_at"], r["finished_at"])}
        for r in found
    ]
    columns = [
        ("number", "#"),
        ("status", "STATUS"),
        ("trigger", "TRIGGER"),
        ("actor", "BY"),
        ("when", "CREATED"),
        ("took", "TOOK"),
        ("id", "RUN"),
    ]
    listing(rows, columns, as_json, raw=found, empty="no runs yet")


@runs.command()
@click.argument("run_id", metavar="RUN")
@JSON
def show(run_id: str, as_json: bool) -> None:
    """A run's jobs and steps with status, exit code, time and outputs; a job that ran
    more than once shows each attempt with its own steps.

    \b
    Example:
      runyard runs show 8eac393d82b1fceeee27
    """
    run = Api().call("GET", f"/api/runs/{run_id}")
    rows: list[dict[str, Any]] = []
    for job in run["jobs"]:
        agent = (job.get("agent") or {}).get("name", "")
        rows.append(
            {
                "what": job["name"],
                "status": job["status"],
                "exit": "",
                "took": took(job["started_at"], job["finished_at"]),
                "outputs": _pairs(job["outputs"]),
                "agent": agent,
            }
        )
        earlier = job.get("attempts") or []
        for past in earlier:  # each attempt on its own, with what came too late
            late = [s for s in job.get("stale", []) if s.get("attempt") == past["attempt"]]
            rows.append(_attempt_row(past["attempt"], past, late))
            rows += [_step_row(step, "    ") for step in past["steps"]]
        if earlier:
            rows.append(_attempt_row(job["attempt"], {**job, "error": None}, []))
        indent = "    " if earlier else "  "
        rows += [_step_row(step, indent) for step in job["steps"]]
    if not as_json:
        click.echo(
            f"{run['pipeline']} #{run['number']}: {run['status']} "
            f"({run['trigger']}, {when(run['created_at'])})"
        )
    columns = [
        ("what", "JOB / STEP"),
        ("status", "STATUS"),
        ("exit", "EXIT"),
        ("took", "TOOK"),
        ("outputs", "OUTPUTS"),
        ("agent", "AGENT"),
    ]
    listing(rows, columns, as_json, raw=run)


def _attempt_row(
    number: int, attempt: dict[str, Any], late: list[dict[str, Any]]
) -> dict[str, Any]:
    note = attempt.get("error") or ""
    if late:
        agents = sorted({s["agent"] for s in late})
        note += f"{'; ' if note else ''}late reports from {', '.join(agents)} ignored"
    return {
        "what": f"  attempt {number}",
        "status": attempt["status"],
        "exit": "",
        "took": took(attempt["started_at"], attempt["finished_at"]),
        "outputs": note,
        "agent": (attempt.get("agent") or {}).get("name", ""),
    }


def _step_row(step: dict[str, Any], indent: str) -> dict[str, Any]:
    return {
        "what": f"{indent}{step['name']}",
        "status": step["status"],
        "exit": step["exit_code"] if step["exit_code"] is not None else "",
        "took": took(step["started_at"], step["finished_at"]),
        "outputs": _pairs(step["outputs"]) or (step.get("error") or ""),
        "agent": "",
    }


def _pairs(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


@runs.command()
@click.argument("run_id", metavar="RUN")
def cancel(run_id: str) -> None:
    """Cancel a run (its running steps are stopped).

    \b
    Example:
      runyard runs cancel 8eac393d82b1fceeee27
    """
    Api().call("POST", f"/api/runs/{run_id}/cancel")
    click.echo(f"run {run_id}: cancel requested")


@runs.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--failed",
    is_flag=True,
    help="run only the jobs that failed (and those after them); the others are reused",
)
def rerun(run_id: str, failed: bool) -> None:
    """Start the same run again (same event and inputs).

    \b
    Example:
      runyard runs rerun 8eac393d82b1fceeee27
      runyard runs rerun 8eac393d82b1fceeee27 --failed
    """
    body = {"failed": True} if failed else None
    made = Api().call("POST", f"/api/runs/{run_id}/rerun", json=body)
    what = "the failed jobs of" if failed else "a re-run of"
    click.echo(f"run {made['run']} started ({what} {run_id})")
