"""The whole system for a bench: dispatcher, web API and agents as real processes on
a stack, and a logged-in HTTP client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from agent.config import AgentConfig, agent_environment
from bench.common import running_stack
from services.stack import Stack, die_with_parent, free_port
from services.store import records
from services.store.connection import connect
from services.store.crypto import new_key


async def _api_key(redis_url: str) -> str:
    r = connect(redis_url)
    try:
        return await records.create_api_key(r, "bench")
    finally:
        await r.aclose()


class BenchSystem:
    def __init__(self, stack: Stack, tmp: Path) -> None:
        self.stack = stack
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.agent_pids: dict[str, int] = {}
        self.env = {
            **os.environ,
            "RUNYARD_LOG": "WARNING",
            "RUNYARD_SECRET_KEY": os.environ.get("RUNYARD_SECRET_KEY") or new_key(),
        }
        port = free_port()
        self.service("dispatcher")
        self.service("logs")
        self.service("web", "--port", str(port))
        key = asyncio.run(_api_key(stack.redis_url))
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        self.wait_until(lambda: self.http.get("/api/health").status_code == 200, "web API")

    def service(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = {**self.env, **self.stack.service_env(name)}
        return self.spawn(name, "serve", name, *args, env=env)

    def spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A `runyard` process: a service with `env`, an agent with an agent's only."""
        parent = os.getpid()
        with (self.tmp / f"{name}-{len(self.procs)}.log").open("wb") as log:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "runyard", *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env if env is not None else agent_environment(self.env),
                    start_new_session=True,
                    preexec_fn=lambda: die_with_parent(parent),
                )
            )
        return self.procs[-1]

    def wait_until(self, check: Any, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not come up")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def agent(self, name: str, project: str, slots: int = 1) -> str:
        made = self.call("POST", "/api/agents", json={"name": name, "projects": [project]})
        directory = self.tmp / f"agent-{name}"
        AgentConfig(made["id"], name, made["token"], made["nats_url"], made["ca"]).save(directory)
        proc = self.spawn(
            f"agent-{name}", "agent", "start", "--slots", str(slots), "--dir", str(directory)
        )
        agent_id = str(made["id"])
        self.agent_pids[agent_id] = proc.pid
        self.wait_until(lambda: self.call("GET", f"/api/agents/{agent_id}")["online"], name)
        return agent_id

    def start_run(self, project: str, pipeline: str) -> str:
        made = self.call(
            "POST", f"/api/projects/{project}/pipelines/{pipeline}/runs", json={"inputs": {}}
        )
        return str(made["run"])

    def wait_run(self, run_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.http.get(f"/api/runs/{run_id}")
            if response.status_code == 200:
                run: dict[str, Any] = response.json()
                if run["status"] not in ("queued", "running"):
                    return run
            time.sleep(0.02)
        raise RuntimeError(f"run {run_id} did not end")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def bench_project() -> Iterator[tuple[BenchSystem, str, Path]]:
    """A running system on the embedded stack, a fresh project and a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="runyard-bench-") as tmp, running_stack() as stack:
        system = BenchSystem(stack, Path(tmp))
        try:
            project = f"bench-{uuid.uuid4().hex[:6]}"
            system.call("POST", "/api/projects", json={"name": project})
            yield system, project, Path(tmp)
        finally:
            system.stop()
