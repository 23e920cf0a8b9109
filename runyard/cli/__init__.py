"""The `runyard` command: each noun's command group lives in its own module and is
imported only when used, so `runyard agent start` does not load the server's code."""

from __future__ import annotations

import importlib

import click

COMMANDS = {
    "agent": "runyard.cli.agent:agent",
    "artifacts": "runyard.cli.outputs:artifacts",
    "credentials": "services.deploy:credentials",
    "login": "runyard.cli.login:login",
    "logout": "runyard.cli.login:logout",
    "logs": "runyard.cli.outputs:logs",
    "pipeline": "runyard.cli.pipeline:pipeline",
    "project": "runyard.cli.project:project",
    "run": "runyard.cli.run:run",
    "runs": "runyard.cli.runs:runs",
    "schema": "runyard.cli.schema:schema",
    "serve": "services.serve:serve",
    "up": "services.up:up",
    "whoami": "runyard.cli.login:whoami",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, name = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), name)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="runyard")
def cli() -> None:
    """Runyard: self-hosted agents and pipelines.

    \b
    Example:
      runyard pipeline validate examples/*.yaml
    """


def main() -> None:
    cli()
