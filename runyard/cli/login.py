"""`runyard login`: remember a server and an API key for the other commands."""

from __future__ import annotations

import json

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


@click.command()
def logout() -> None:
    """Forget the server and API key of `runyard login`.

    \b
    Example:
      runyard logout
    """
    config.forget("host", "api_key")
    click.echo("logged out")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def whoami(as_json: bool) -> None:
    """The server and the API key's name and roles.

    \b
    Example:
      runyard whoami
    """
    api = Api()
    me = api.call("GET", "/api/whoami")
    if as_json:
        click.echo(json.dumps({"host": api.host, **me}))
        return
    roles = ", ".join(f"{p}: {r}" for p, r in me["roles"].items())
    click.echo(f"{me['name']} on {api.host} ({me['role']}{'; ' + roles if roles else ''})")
