"""`runyard up`: the whole system on one machine, on the embedded servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import click

from agent.config import agent_environment, fingerprint
from runyard.cli import config
from runyard.cli.client import Api
from runyard.cli.run import follow
from schemas.status import Status
from services.bootstrap import EXAMPLES_PROJECT, bootstrap
from services.credentials import without_user
from services.stack import Server, Stack, StackError
from services.store.crypto import new_key

SERVICE_START = 20.0  # seconds for the API to answer and the agent to come online


def _service(data_dir: Path, name: str, env: dict[str, str], *args: str) -> Server:
    argv = [sys.executable, "-m", "runyard", *args]
    return Server(name, argv, 0, data_dir / "logs" / f"{name}.log", env)


def _wait_for(what: str, check: Callable[[], bool], servers: list[Server]) -> None:
    deadline = time.monotonic() + SERVICE_START
    while time.monotonic() < deadline:
        for server in servers:
            if server.process is not None and server.process.poll() is not None:
                raise StackError(f"{server.name} exited:\n{server.tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise StackError(f"{what} did not come up within {SERVICE_START:.0f} s")


def _secret_key(data_dir: Path) -> str:
    """The key stored secrets are encrypted with, made once per data directory."""
    path = data_dir / "secret.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_key())
    return path.read_text().strip()


def _start_services(
    stack: Stack, data_dir: Path, port: int, hooks_port: int, examples: Path | None
) -> str:
    """Start every service and the local agent; returns the web URL."""
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    saved = config.load()
    url = f"http://127.0.0.1:{port}"
    agent_dir = data_dir / "agent"
    setup = asyncio.run(
        bootstrap(
            stack.redis_url,
            stack.local_nats_url,
            saved.get("api_key") if saved.get("host") == url else None,
            examples,
            agent_dir,
            stack.tls.ca.read_text() if stack.tls else "",
        )
    )
    for problem in setup.problems:
        click.echo(f"example skipped: {problem}", err=True)
    config.save({"host": url, "api_key": setup.api_key, "project": EXAMPLES_PROJECT})
    key = os.environ.get("RUNYARD_SECRET_KEY") or _secret_key(data_dir)

    def env(name: str) -> dict[str, str]:
        return {**os.environ, **stack.service_env(name), "RUNYARD_SECRET_KEY": key}

    # the local agent gets its own credentials (in its dir) and nothing of the server's
    agent_env = agent_environment(dict(os.environ))
    services = [
        _service(data_dir, "dispatcher", env("dispatcher"), "serve", "dispatcher"),
        _service(data_dir, "logs", env("logs"), "serve", "logs"),
        _service(data_dir, "scheduler", env("scheduler"), "serve", "scheduler"),
        _service(
            data_dir, "trigger", env("trigger"), "serve", "trigger", "--port", str(hooks_port)
        ),
        _service(
            data_dir,
            "web",
            env("web"),
            *("serve", "web", "--port", str(port)),
            f"--public-nats-url={stack.agent_nats_url}",
        ),
        _service(
            data_dir,
            "agent",
            agent_env,
            "agent",
            "start",
            "--slots",
            "2",
            "--dir",
            str(agent_dir),
            *(f"--hide={p}" for p in _hidden_from_steps(data_dir, agent_dir)),
        ),
    ]
    for server in services:
        stack.servers.append(server)
        server.start()
    api = Api()
    _wait_for("the web API", lambda: bool(api.call("GET", "/api/health")["ok"]), services)
    _wait_for(
        "the local agent",
        lambda: bool(api.call("GET", f"/api/agents/{setup.agent.id}")["online"]),
        services,
    )
    click.echo(f"loaded {len(setup.loaded)} example pipeline(s) into project '{EXAMPLES_PROJECT}'")
    click.echo(f"log in to {url} as admin, password in {setup.admin_password_file}")
    return url


def _hidden_from_steps(data_dir: Path, agent_dir: Path) -> list[Path]:
    """What the local agent's steps must not see: the server's data directory (keys,
    passwords, server data) and the CLI's login, though they share this user."""
    hidden = [p for p in data_dir.iterdir() if p != agent_dir]
    return [*hidden, config.path()]


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


def _until_signal(ready: str) -> None:
    """Print `ready`, then wait for Ctrl-C or SIGTERM (handlers are set first, so a
    Ctrl-C typed the moment the line appears is not lost)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(ready)
    while not stop.wait(1.0):
        pass
    # A second Ctrl-C while stopping must not leave servers half stopped.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


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
    type=int,
    help="NATS port for agents  [default: 4222 with --public, else any free port]",
)
def up(
    data_dir: Path,
    port: int,
    hooks_port: int,
    examples: Path,
    example: str,
    public_host: str,
    nats_port: int | None,
) -> None:
    """Start Runyard on this machine: NATS and Valkey, the dispatcher, log collector,
    scheduler, webhook receiver, web API and one local agent (2 slots); load the
    examples, run one, and stay up until Ctrl-C.

    The CLI is logged in to this server afterwards.

    \b
    Example:
      runyard up --data-dir /var/lib/runyard --port 8400
    """
    try:
        stack = Stack(
            data_dir.resolve(),
            public_host=public_host,
            nats_port=nats_port if nats_port is not None else 4222 if public_host else 0,
        )
        with _terminal_foreground(), stack:
            click.echo(f"NATS   {stack.agent_nats_url} (agents), {stack.ws_url} (WebSocket)")
            if stack.tls:
                ca = stack.tls.ca.read_text()
                click.echo(f"TLS    CA {stack.tls.ca}, fingerprint {fingerprint(ca)}")
            click.echo(f"Valkey {without_user(stack.redis_url)} (password-protected)")
            url = _start_services(stack, data_dir.resolve(), port, hooks_port, examples)
            click.echo(f"Webhooks at http://127.0.0.1:{hooks_port}/hooks/<host>/<project>")
            if example:
                _run_example(example)
            _until_signal(
                f"Runyard is up at {url} (API key in {config.path()}); press Ctrl-C to stop."
            )
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("stopped")
