"""`runyard agent create|start`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.config import AgentConfig, ConfigError, default_dir, fingerprint
from runyard.cli.output import JSON, listing, when

if TYPE_CHECKING:
    from runyard.cli.client import Api
    from runyard.settings import AgentSettings

DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=default_dir,
    show_default="~/.local/share/runyard/agent",
    help="the agent's home: credentials, work, caches",
)


def _api() -> Api:
    # imported when used: httpx (and the rich and pygments its own CLI loads) would add
    # about 16 MiB to every started agent, which never calls the web API
    from runyard.cli.client import Api

    return Api()


@click.group()
def agent() -> None:
    """Register this machine as an agent and run it.

    \b
    Example:
      runyard agent create --name gpu-box --labels gpu && runyard agent start
    """


@agent.command()
@click.option("--name", required=True, help="how the agent shows in lists")
@click.option("--labels", default="", help="comma-separated labels jobs ask for in runs-on")
@click.option("--project", "projects", multiple=True, help="assign to a project (repeatable)")
@click.option(
    "--ca-fingerprint",
    default=None,
    help="refuse the server's CA unless it has this fingerprint (as `runyard up` printed it)",
)
@DIR
def create(
    name: str,
    labels: str,
    projects: tuple[str, ...],
    ca_fingerprint: str | None,
    directory: Path,
) -> None:
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
    made = _api().call("POST", "/api/agents", json=body)
    ca = made.get("ca") or ""
    if ca_fingerprint and (not ca or fingerprint(ca) != ca_fingerprint.strip().upper()):
        raise click.ClickException(
            f"the server's CA is {fingerprint(ca) if ca else 'missing'}, not "
            f"{ca_fingerprint}: not saving agent {made['id']} (remove it on the server)"
        )
    config = AgentConfig(made["id"], name, made["token"], made["nats_url"], ca)
    path = config.save(directory)
    click.echo(f"agent {made['id']} created; credentials in {path}")
    if ca:
        click.echo(f"it verifies the server's TLS with the CA {fingerprint(ca)}")
    click.echo(f"start it with: runyard agent start --dir {directory}")


@agent.command()
@click.option(
    "--slots", default=1, show_default=True, type=click.IntRange(1, 256), help="jobs run at once"
)
@click.option("--nats-url", default=None, help="override the NATS URL from the agent file")
@click.option(
    "--hide",
    multiple=True,
    type=click.Path(path_type=Path),
    help="a path steps must not see (repeatable; the agent's own secrets always are)",
)
@click.option(
    "--keep-workspaces",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="keep a finished job's workspace this long (for a look) before removing it",
)
@DIR
def start(
    slots: int,
    nats_url: str | None,
    hide: tuple[Path, ...],
    keep_workspaces: float,
    directory: Path,
) -> None:
    """Connect to the server and run jobs until Ctrl-C (running steps are cancelled and
    reported before it exits).

    \b
    Example:
      runyard agent start --slots 2
    """
    from runyard.settings import AgentSettings

    settings = AgentSettings.from_env()  # a bad value: a click error naming it, at once
    try:
        config = AgentConfig.load(directory)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=settings.log, format="%(asctime)s %(name)s %(message)s")
    # the standard loop: uvloop spawns processes about 2 ms slower, and spawning is
    # what an agent does most
    from agent.connection import Refused

    try:
        url = nats_url or config.nats_url
        asyncio.run(_start(config, settings, url, directory, slots, hide, keep_workspaces))
    except Refused as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("agent stopped")


async def _start(
    config: AgentConfig,
    settings: AgentSettings,
    url: str,
    directory: Path,
    slots: int,
    hide: tuple[Path, ...],
    keep_workspaces: float,
) -> None:
    if not url.startswith(("ws://", "wss://")):
        # nats-py imports aiohttp (its WebSocket transport) whenever it can; an agent
        # on TCP or TLS is about 15 MiB smaller without it
        sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]
    from nats.errors import Error as NatsError

    from agent.connection import Refused, admitted, connect
    from agent.daemon import Agent  # runners load only here
    from agent.sandbox import Sandbox

    sandbox = Sandbox(directory, hide)
    if (why := sandbox.probe()) is not None:
        logging.getLogger("runyard.agent").warning(
            "steps run WITHOUT isolation (user namespaces are not available: %s); they "
            "can read this agent's token and anything else its user can",
            why,
        )

    stop = asyncio.Event()
    refused = asyncio.Event()
    lost = asyncio.Event()  # the NATS client closed for good, not by us
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while True:
        if not await admitted(config, url, stop):
            return
        try:
            nc = await connect(config, url, refused, lost)
            break
        except (OSError, TimeoutError, NatsError) as exc:  # gone again since the probe
            logging.getLogger("runyard.agent").warning("cannot connect to NATS: %s", exc)
    agent = Agent(config, nc, directory, slots, sandbox, keep_workspaces, settings)
    gone = [asyncio.ensure_future(e.wait()) for e in (refused, agent.removed, lost)]
    for watch in gone:
        watch.add_done_callback(lambda _: stop.set())
    try:
        await agent.run(stop)
    finally:
        was_lost = lost.is_set()  # before our own close below sets it
        for watch in gone:
            watch.cancel()
        # closing a connection that is down fails in ways that do not matter any more
        with contextlib.suppress(TimeoutError, OSError, NatsError):
            await asyncio.wait_for(nc.close(), 5)
    if refused.is_set() or agent.removed.is_set():
        raise Refused(f"the server no longer accepts agent {config.id}: it was removed")
    if was_lost:  # exit non-zero so that a supervisor (systemd, runyard up) starts it again
        raise Refused("the connection to NATS closed for good; start the agent again")


def _agent_row(a: dict[str, Any]) -> dict[str, Any]:
    metrics = a.get("metrics") or {}
    memory = (
        f"{metrics['memory_used'] / metrics['memory_total'] * 100:.0f}%"
        if metrics.get("memory_total")
        else "-"
    )
    return {
        **a,
        "state": "online" if a["online"] else "offline",
        "labels_text": ",".join(a["labels"]) or "-",
        "slots_text": f"{a['slots_used']}/{a['slots']}",
        "projects_text": ",".join(a["projects"]) or "-",
        "cpu": f"{metrics['cpu_percent']:.0f}%" if metrics else "-",
        "memory": memory,
        "seen": when(a.get("last_seen")),
    }


AGENT_COLUMNS = [
    ("name", "NAME"),
    ("state", "STATE"),
    ("labels_text", "LABELS"),
    ("slots_text", "SLOTS"),
    ("projects_text", "PROJECTS"),
    ("cpu", "CPU"),
    ("memory", "MEMORY"),
    ("seen", "LAST SEEN"),
    ("id", "ID"),
]


@agent.command("list")
@JSON
def list_(as_json: bool) -> None:
    """List agents: online or offline, labels, slots in use, projects, load.

    \b
    Example:
      runyard agent list
    """
    found = _api().call("GET", "/api/agents")
    listing(
        [_agent_row(a) for a in found],
        AGENT_COLUMNS,
        as_json,
        raw=found,
        empty="No agents yet — run `runyard agent create --name NAME`",
    )


@agent.command()
@click.argument("agent_id", metavar="AGENT")
@JSON
def show(agent_id: str, as_json: bool) -> None:
    """One agent, with its machine facts and running jobs.

    \b
    Example:
      runyard agent show a1b2c3d4e5f6
    """
    found = _api().call("GET", f"/api/agents/{agent_id}")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    row = _agent_row(found)
    for key, heading in AGENT_COLUMNS:
        click.echo(f"{heading.lower():<10} {row[key]}")
    metrics = found.get("metrics") or {}
    for key in ("os", "python", "cpu_count", "load", "gpus"):
        if key in metrics:
            click.echo(f"{key:<10} {metrics[key]}")
    click.echo(f"{'jobs':<10} {', '.join(found['jobs']) or '-'}")


@agent.command()
@click.argument("agent_id", metavar="AGENT")
def remove(agent_id: str) -> None:
    """Remove an agent (it can no longer take work).

    \b
    Example:
      runyard agent remove a1b2c3d4e5f6
    """
    _api().call("DELETE", f"/api/agents/{agent_id}")
    click.echo(f"agent {agent_id} removed")
