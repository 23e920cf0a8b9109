"""The system a chaos run attacks: its own embedded stack (NATS and Valkey on ports
that stay the same across restarts, one data directory), the dispatcher, the log
collector, the web API and agents, every one a process that can be killed, stopped
and started again, and a logged-in HTTP client that rides out outages."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from agent.config import AgentConfig, agent_environment
from services.stack import NATS, VALKEY, Server, Stack, free_port
from services.store import records
from services.store.connection import connect
from services.store.crypto import new_key

SERVICES = ("dispatcher", "logs", "web")
OUTSIDE_SERVERS = ("RUNYARD_NATS_URL", "RUNYARD_REDIS_URL")
READY = 30.0  # seconds for a process to be ready after a (re)start


async def _api_key(redis_url: str) -> str:
    r = connect(redis_url)
    try:
        return await records.create_api_key(r, "chaos")
    finally:
        await r.aclose()


class ChaosSystem:
    """Start with `with ChaosSystem(tmp) as system:`; parts by name in `parts`
    ("nats-server", "valkey-server", "dispatcher", "logs", "web", "agent-<name>")."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stack = Stack(
            tmp / "stack", nats_port=free_port(), valkey_port=free_port(), ws_port=free_port()
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in OUTSIDE_SERVERS},
            "RUNYARD_LOG": "WARNING",
            "RUNYARD_SECRET_KEY": new_key(),
        }
        self.parts: dict[str, Server] = {}
        self.agent_dirs: dict[str, Path] = {}
        self.agent_ids: dict[str, str] = {}
        self.http: httpx.Client | None = None

    def __enter__(self) -> ChaosSystem:
        # its own servers, whatever RUNYARD_NATS_URL / RUNYARD_REDIS_URL say: they are
        # killed and started again
        outside = {k: os.environ.pop(k) for k in OUTSIDE_SERVERS if k in os.environ}
        try:
            self.stack.start()
        finally:
            os.environ.update(outside)
        try:
            self.parts[NATS] = self.stack.server(NATS)
            self.parts[VALKEY] = self.stack.server(VALKEY)
            port = free_port()
            for name in SERVICES:
                argv = ["serve", name, *(["--port", str(port)] if name == "web" else [])]
                env = {**self.env, **self.stack.service_env(name)}
                self._add(name, argv, env).start()
            key = asyncio.run(_api_key(self.stack.redis_url))
            self.http = httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            self.wait("the web API", lambda: self.get("/api/health") is not None)
        except BaseException:
            self.stack.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self.http is not None:
            self.http.close()
        for part in self.parts.values():  # resume what was stopped, so it can stop
            if part.running:
                assert part.process is not None
                os.kill(part.process.pid, signal.SIGCONT)
        self.stack.stop()

    def _add(self, name: str, argv: list[str], env: dict[str, str]) -> Server:
        argv = [sys.executable, "-m", "runyard", *argv]
        server = Server(name, argv, 0, self.tmp / f"{name}.log", env)
        self.stack.servers.append(server)
        self.parts[name] = server
        return server

    # --- agents ---------------------------------------------------------------------

    def agent(self, name: str, project: str, slots: int) -> str:
        made = self.call("POST", "/api/agents", json={"name": name, "projects": [project]})
        directory = self.tmp / f"agent-{name}"
        AgentConfig(made["id"], name, made["token"], made["nats_url"], made["ca"]).save(directory)
        argv = ["agent", "start", "--slots", str(slots), "--dir", str(directory)]
        part = f"agent-{name}"
        self._add(part, argv, agent_environment(self.env)).start()
        self.agent_dirs[part] = directory
        self.agent_ids[part] = made["id"]
        self.wait(f"agent {name}", lambda: self.agent_online(part))
        return part

    def agent_online(self, part: str) -> bool:
        found = self.get(f"/api/agents/{self.agent_ids[part]}")
        return bool(found and found["online"])

    # --- faults ---------------------------------------------------------------------

    def signal(self, part: str, sig: signal.Signals) -> None:
        server = self.parts[part]
        if server.running:
            assert server.process is not None
            os.kill(server.process.pid, sig)
            if sig == signal.SIGKILL:
                server.process.wait()

    def restart(self, part: str) -> None:
        self.stack.restart(self.parts[part])

    # --- API ------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        """The JSON at `path`, or None while it cannot be had (an outage, not yet there)."""
        assert self.http is not None
        try:
            response = self.http.get(path)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A call that must succeed; retried through an outage for up to READY s."""
        assert self.http is not None
        deadline = time.monotonic() + READY
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
                if response.status_code < 500:
                    response.raise_for_status()
                    return response.json()
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path} kept failing")
            time.sleep(0.2)

    def wait(self, what: str, check: Callable[[], bool], timeout: float = READY) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up:\n{self.tails()}")
            time.sleep(0.1)

    def tails(self) -> str:
        return "".join(f"\n--- {name}\n{part.tail(15)}" for name, part in self.parts.items())
