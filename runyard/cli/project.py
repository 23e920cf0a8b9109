"""`runyard project create|list`."""

from __future__ import annotations

import click

from runyard.cli.client import Api
from runyard.cli.output import JSON, listing


@click.group()
def project() -> None:
    """Projects hold pipelines, runs and agent assignments.

    \b
    Example:
      runyard project create vision
    """


@project.command("create")
@click.argument("name")
def create(name: str) -> None:
    """Create a project.

    \b
    Example:
      runyard project create vision
    """
    Api().call("POST", "/api/projects", json={"name": name})
    click.echo(f"project '{name}' created")


@project.command("list")
@JSON
def list_(as_json: bool) -> None:
    """List projects.

    \b
    Example:
      runyard project list --json
    """
    found = Api().call("GET", "/api/projects")
    listing(found, [("name", "PROJECT")], as_json, empty="no projects yet")
