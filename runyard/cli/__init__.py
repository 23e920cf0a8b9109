"""The `runyard` command: mounts each noun's command group from its own module."""

from __future__ import annotations

import click

from runyard.cli.agent import agent
from runyard.cli.login import login, logout, whoami
from runyard.cli.outputs import artifacts, logs
from runyard.cli.pipeline import pipeline
from runyard.cli.project import project
from runyard.cli.run import run
from runyard.cli.runs import runs
from runyard.cli.schema import schema
from services.serve import serve
from services.up import up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="runyard")
def cli() -> None:
    """Runyard: self-hosted agents and pipelines.

    \b
    Example:
      runyard pipeline validate examples/*.yaml
    """


for command in (
    agent,
    artifacts,
    login,
    logout,
    logs,
    pipeline,
    project,
    run,
    runs,
    schema,
    serve,
    up,
    whoami,
):
    cli.add_command(command)


def main() -> None:
    cli()
