"""`runyard agent create|start`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import click

from agent.config import AgentConfig, ConfigError, default_dir
from agent.daemon import Agent, connect
from runyard.cli.client import Api

DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=default_dir,
    show_default="~/.local/share/runyard/agent",
    help="the agent's home: credentials, work, caches",
)


@click.group()
def agent() -> None:
    """Register this machine as an agent and run it."""


@agent.command()
@click.option("--name", required=True, help="how the agent shows in lists")
@click.option("--labels", default="", help="comma-separated labels jobs ask for in runs-on")
@click.option("--project", "projects", multiple=True, help="assign to a project (repeatable)")
@DIR
def create(name: str, labels: str, projects: tuple[str, ...], directory: Path) -> None:
    """Register an agent with the server and keep its credentials in --dir.

    \b
    Example:
      runyard agent create --name gpu-box --labels gpu,cuda12 --project vision
    """
    body = {
        "name": name,
        "labels": [x.strip() for x in labels.split(",") if x.strip()],
        "projects": list(projects),
    }
    made = Api().call("POST", "/api/agents", json=body)
    path = AgentConfig(made["id"], name, made["token"], made["nats_url"]).save(directory)
    click.echo(f"agent {made['id']} created; credentials in {path}")
    click.echo(f"start it with: runyard agent start --dir {directory}")


@agent.command()
@click.option(
    "--slots", default=1, show_default=True, type=click.IntRange(1, 256), help="jobs run at once"
)
@click.option("--nats-url", default=None, help="override the NATS URL from the agent file")
@DIR
def start(slots: int, nats_url: str | None, directory: Path) -> None:
    """Connect to the server and run jobs until Ctrl-C (running steps are cancelled and
    reported before it exits).

    \b
    Example:
      runyard agent start --slots 2
    """
    try:
        config = AgentConfig.load(directory)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # the standard loop: uvloop spawns processes about 2 ms slower, and spawning is
    # what an agent does most
    asyncio.run(_start(config, nats_url or config.nats_url, directory, slots))
    click.echo("agent stopped")


async def _start(config: AgentConfig, url: str, directory: Path, slots: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect(config, url)
    try:
        await Agent(config, nc, directory, slots).run(stop)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nc.close(), 5)
