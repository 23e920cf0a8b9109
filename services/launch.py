"""What `runyard up` runs on its stack: every service (as many replicas as asked) and
the local agent, each a `runyard` process of its own, started in order (the agent only
once the dispatcher answers admissions) and waited for until the web API answers and
the agent is online."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from agent.actions import DIR_SETTING
from agent.config import agent_environment
from runyard.cli import config
from runyard.cli.client import Api
from services.bootstrap import EXAMPLES_PROJECT, bootstrap
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


def services(
    stack: Stack,
    data_dir: Path,
    env: Callable[[str], dict[str, str]],
    web_ports: list[int],
    hooks_ports: list[int],
) -> list[Server]:
    """Every service, as many replicas of each as `web_ports` has ports (named
    `dispatcher-1`, … when more than one), the dispatchers first; `env(service)` is the
    environment a service runs with. Each web and webhook replica listens on a port of
    its own (a load balancer in front shares them out)."""
    replicas = len(web_ports)
    made = []
    for name in ("dispatcher", "logs", "scheduler", "trigger", "web"):
        for i in range(replicas):
            args = {
                "trigger": ["--port", str(hooks_ports[i])],
                "web": ["--port", str(web_ports[i]), f"--public-nats-url={stack.agent_nats_url}"],
            }.get(name, [])
            part = f"{name}-{i + 1}" if replicas > 1 else name
            made.append(_service(data_dir, part, env(name), "serve", name, *args))
    return made


def start_services(
    stack: Stack,
    data_dir: Path,
    port: int,
    hooks_port: int,
    examples: Path | None,
    replicas: int = 1,
) -> str:
    """Start every service (`replicas` of each: web and webhook replicas on `port`,
    `port + 2`, … and `hooks_port`, `hooks_port + 2`, …) and the local agent; returns
    the web URL."""
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
    # and the examples' actions from their copies beside them, so they run offline
    if examples is not None and (examples / "actions").is_dir():
        agent_env.setdefault(DIR_SETTING, str((examples / "actions").resolve()))
    shifts = [2 * i for i in range(replicas)]
    parts = services(
        stack, data_dir, env, [port + s for s in shifts], [hooks_port + s for s in shifts]
    )
    dispatcher = parts[0]
    agent = _service(
        data_dir,
        "agent",
        agent_env,
        *("agent", "start", "--slots", "2", "--dir", str(agent_dir)),
        *(f"--hide={p}" for p in _hidden_from_steps(data_dir, agent_dir)),
    )
    logged = dispatcher.log.stat().st_size if dispatcher.log.exists() else 0
    for server in parts:
        stack.servers.append(server)
        server.start()
    # The agent only once the dispatcher answers agents' admissions: NATS holds a
    # connection that asks before then until its auth timeout, stopping included.
    _wait_for("the dispatcher", lambda: _logged(dispatcher, logged, "dispatcher ready"), parts)
    stack.servers.append(agent)
    agent.start()
    parts.append(agent)
    api = Api()
    _wait_for("the web API", lambda: bool(api.call("GET", "/api/health")["ok"]), parts)
    _wait_for(
        "the local agent",
        lambda: bool(api.call("GET", f"/api/agents/{setup.agent.id}")["online"]),
        parts,
    )
    click.echo(f"loaded {len(setup.loaded)} example pipeline(s) into project '{EXAMPLES_PROJECT}'")
    click.echo(f"log in to {url} as admin, password in {setup.admin_password_file}")
    return url


def _logged(server: Server, offset: int, line: str) -> bool:
    """Whether `server` logged `line` past `offset` (its log goes on from earlier runs)."""
    with server.log.open("rb") as log:
        log.seek(offset)
        return line.encode() in log.read()


def _hidden_from_steps(data_dir: Path, agent_dir: Path) -> list[Path]:
    """What the local agent's steps must not see: the server's data directory (keys,
    passwords, server data) and the CLI's login, though they share this user."""
    hidden = [p for p in data_dir.iterdir() if p != agent_dir]
    return [*hidden, config.path()]
