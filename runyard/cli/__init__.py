"""The `runyard` command: mounts each noun's command group from its own module."""

from __future__ import annotations

import click

from runyard.cli.pipeline import pipeline
from runyard.cli.schema import schema
from services.up import up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="runyard")
def cli() -> None:
    """Runyard: self-hosted agents and pipelines.

    \b
    Example:
      runyard pipeline validate examples/*.yaml
    """


cli.add_command(pipeline)
cli.add_command(schema)
cli.add_command(up)


def main() -> None:
    cli()
