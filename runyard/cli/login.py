"""`runyard login`: remember a server and an API key for the other commands."""

from __future__ import annotations

import click

from runyard.cli import config
from runyard.cli.client import Api


@click.command()
@click.option("--host", required=True, help="the server's URL, e.g. http://ci.example.com:8400")
@click.option("--api-key", prompt=True, hide_input=True, help="an API key (asked when not given)")
def login(host: str, api_key: str) -> None:
    """Check an API key against a server and keep both in the CLI's config.

    \b
    Example:
      runyard login --host http://ci.example.com:8400
    """
    Api(host, api_key).call("GET", "/api/projects")
    path = config.save({"host": host.rstrip("/"), "api_key": api_key})
    click.echo(f"logged in to {host} (saved in {path})")
