"""`runyard up`: the whole system on one machine, on the embedded servers. Here: the
command, its terminal, the servers and their ports, and keeping every part running
until Ctrl-C; the service and agent processes it starts are services/launch.py's."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import click

from agent.config import fingerprint
from runyard.cli import config
from runyard.cli.client import Api
from runyard.cli.run import follow
from schemas.status import Status
from services import addresses
from services.bootstrap import EXAMPLES_PROJECT
from services.cluster import Cluster
from services.credentials import without_user
from services.launch import SERVICE_START, services, start_services
from services.stack import PortInUse, Stack, StackError
from services.supervise import Supervisor

__all__ = ["services", "up"]  # services: the replicas as `runyard up` runs them (tests/cluster)

SUPERVISE_EVERY = 0.5  # seconds between checks that every part still runs


def _run_example(name: str) -> None:
    api = Api()
    path = f"/api/projects/{EXAMPLES_PROJECT}/pipelines/{quote(name)}/runs"
    try:
        started = api.call("POST", path, json={"inputs": {}})
    except click.ClickException as exc:
        click.echo(f"example '{name}' not started: {exc.message}", err=True)
        return
    click.echo(f"running the example '{name}' …")
    final = follow(api, started["run"], click.echo)
    if final["status"] != Status.SUCCESS:
        click.echo("the example did not succeed; see the lines above", err=True)


def _all_running(supervisor: Supervisor) -> None:
    """Until every part runs (the supervisor restarting any that died); a part that
    will not stay up ends `runyard up` with its name rather than a claim to be up."""
    deadline = time.monotonic() + SERVICE_START
    supervisor.check()
    while dead := supervisor.dead():
        if time.monotonic() > deadline:
            raise StackError(f"{', '.join(dead)} keeps exiting; see the lines above")
        time.sleep(0.1)
        supervisor.check()


def _until_signal(ready: str, supervisor: Supervisor) -> None:
    """Print `ready`, then keep every part running until Ctrl-C or SIGTERM (handlers
    are set first, so a Ctrl-C typed the moment the line appears is not lost)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    _all_running(supervisor)
    click.echo(ready)
    while not stop.wait(SUPERVISE_EVERY):
        supervisor.check()
    # A second Ctrl-C while stopping must not leave servers half stopped.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _stop(stack: Stack) -> None:
    click.echo("stopping …")
    started = time.monotonic()
    for server in stack.stop():
        click.echo(f"{server.name} did not stop in time and was killed", err=True)
    click.echo(f"stopped in {time.monotonic() - started:.1f} s")


def _stack(
    data_dir: Path, public_host: str, nats: int | None, valkey: int | None, nodes: int | None
) -> Stack:
    """The servers, on the ports of the last start in `data_dir` unless told others;
    a local cluster of `nodes` NATS nodes (and Valkey with Sentinel) when given."""
    listen = "0.0.0.0" if public_host else "127.0.0.1"
    ports = addresses.choose(data_dir, listen, nats, valkey)
    if nodes:
        if public_host:
            raise click.UsageError("--cluster runs on this machine only: leave out --public")
        return Cluster(data_dir, nats_port=ports.nats, valkey_port=ports.valkey, nodes=nodes)
    return Stack(
        data_dir,
        public_host=public_host,
        nats_port=ports.nats,
        ws_port=ports.websocket,
        valkey_port=ports.valkey,
    )


def _keep_ports(stack: Stack) -> None:
    """Keep the ports of the servers this start runs, for the next start (a server
    named by RUNYARD_NATS_URL / RUNYARD_REDIS_URL is the operator's: not recorded)."""
    before = addresses.kept(stack.data_dir)
    ours = stack.started_nats
    nats, websocket = (stack.nats_port, stack.ws_port) if ours else (before.nats, before.websocket)
    if ours and before.nats and before.nats != nats:
        click.echo(
            f"NATS moved from port {before.nats} to {nats}: agents made earlier still "
            f"reach port {before.nats} (give them --nats-url)",
            err=True,
        )
    valkey = stack.valkey_port if stack.started_valkey else before.valkey
    addresses.save(stack.data_dir, addresses.Ports(nats, websocket, valkey))


@contextlib.contextmanager
def _terminal_foreground() -> Iterator[None]:
    """Own the terminal's foreground while running, as a shell's job would.

    Ctrl-C then reaches this process alone, not a wrapper such as `just`, which would
    report the interrupt as a failure even though Runyard stopped cleanly."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    before = os.tcgetpgrp(fd)
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(fd, os.getpgrp())
    except OSError:  # e.g. already a session leader: keep the terminal as it is
        signal.signal(signal.SIGTTOU, previous)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, before)
        signal.signal(signal.SIGTTOU, previous)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".runyard"),
    show_default=True,
    help="where the servers keep their data",
)
@click.option("--port", default=8400, show_default=True, type=int, help="web and API port")
@click.option(
    "--hooks-port",
    default=8401,
    show_default=True,
    type=int,
    help="webhook receiver port (/hooks/<host>/<project>)",
)
@click.option(
    "--examples",
    type=click.Path(path_type=Path),
    default=Path("examples"),
    show_default=True,
    help="pipelines to load into the 'examples' project",
)
@click.option(
    "--example",
    "example",
    default="Adding Numbers",
    show_default=True,
    help="the example pipeline to run once everything is up ('' for none)",
)
@click.option(
    "--public",
    "public_host",
    default="",
    metavar="HOST",
    help="let agents on other machines connect: NATS listens on every interface with "
    "TLS (a CA made under --data-dir), and new agents are told to reach HOST",
)
@click.option(
    "--nats-port",
    default=None,
    type=click.IntRange(1, 65535),
    help="NATS port for agents  [default: the last start's in --data-dir, else 4222]",
)
@click.option(
    "--valkey-port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Valkey port  [default: the last start's in --data-dir, else a free one]",
)
@click.option(
    "--cluster",
    "nodes",
    default=None,
    type=click.IntRange(3, 5),
    metavar="N",
    help="a local cluster: N NATS nodes (on --nats-port and the next ports), Valkey "
    "with a replica and 3 Sentinels, and two replicas of every service",
)
def up(
    data_dir: Path,
    port: int,
    hooks_port: int,
    examples: Path,
    example: str,
    public_host: str,
    nats_port: int | None,
    valkey_port: int | None,
    nodes: int | None,
) -> None:
    """Start Runyard on this machine: NATS and Valkey, the dispatcher, log collector,
    scheduler, webhook receiver, web API and one local agent (2 slots); load the
    examples, run one, and stay up until Ctrl-C.

    The CLI is logged in to this server afterwards. A part that exits is restarted
    (with back-off) and reported. NATS and Valkey keep their ports across restarts,
    so agents made with `runyard agent create` reconnect by themselves.

    \b
    With --cluster 3 every part runs more than once, as in production: the web API
    answers on --port and --port + 2, the webhook receiver on --hooks-port and
    --hooks-port + 2, and losing any one NATS node, the Valkey primary or a replica
    of any service does not stop it.

    \b
    Examples:
      runyard up --data-dir /var/lib/runyard --port 8400
      runyard up --cluster 3
    """
    data_dir = data_dir.resolve()
    try:
        stack = _stack(data_dir, public_host, nats_port, valkey_port, nodes)
        with _terminal_foreground(), stack:
            _keep_ports(stack)
            click.echo(f"NATS   {stack.agent_nats_url} (agents), {stack.ws_url} (WebSocket)")
            if stack.tls:
                ca = stack.tls.ca.read_text()
                click.echo(f"TLS    CA {stack.tls.ca}, fingerprint {fingerprint(ca)}")
            click.echo(f"Valkey {without_user(stack.redis_url)} (password-protected)")
            replicas = 2 if nodes else 1
            url = start_services(stack, data_dir, port, hooks_port, examples, replicas)
            click.echo(f"Webhooks at http://127.0.0.1:{hooks_port}/hooks/<host>/<project>")
            if example:
                _run_example(example)
            supervisor = Supervisor(stack, lambda line: click.echo(line, err=True))
            _until_signal(
                f"Runyard is up at {url} (API key in {config.path()}); press Ctrl-C to stop.",
                supervisor,
            )
            _stop(stack)
    except PortInUse as exc:
        raise click.ClickException(addresses.in_use(exc)) from None
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C before it was up: everything was stopped
        raise click.ClickException("interrupted while starting; stopped") from None
