"""The whole system for a test: dispatcher(s), web API and agents as real processes
(`python -m runyard serve …`, `runyard agent start`) on the session's NATS and Valkey."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.config import AgentConfig, agent_environment
from services.stack import Stack, die_with_parent, free_port
from services.store import records
from services.store.connection import connect
from tests.processes import wait_dead


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def send(self, sig: signal.Signals) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        self.send(sig)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:  # a stop that hangs must not leak the process
            self.send(signal.SIGKILL)
            self.popen.wait(10)
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")


PORT_TRIES = 5
TAKEN = "address already in use"  # what uvicorn says when the port was taken meanwhile


@dataclass
class AgentProc:
    id: str
    dir: Path
    proc: Proc | None = None


@dataclass
class System:
    stack: Stack
    tmp: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    url: str = ""
    key: str = ""
    http: httpx.AsyncClient | None = None

    # --- processes ------------------------------------------------------------------

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """A `runyard` process; a service gets `env` (its own identities), an agent only
        what an agent may see."""
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        with log.open("wb") as out:
            parent = os.getpid()
            popen = subprocess.Popen(
                [sys.executable, "-m", "runyard", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env if env is not None else agent_environment(self.env),
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(parent),  # none outlives a killed pytest
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def service(self, name: str, *args: str) -> Proc:
        env = {**self.env, **self.stack.service_env(name)}
        return self.spawn(name, "serve", name, *args, env=env)

    def dispatcher(self) -> Proc:
        return self.service("dispatcher")

    async def ready(self, proc: Proc, timeout: float = 20) -> None:
        """Until a background service has started (it answers agents' admissions)."""

        async def started() -> bool:
            return f"{proc.name} ready" in proc.output()

        await self.wait_for(started, timeout, f"{proc.name} to start")

    def scheduler(self) -> Proc:
        return self.service("scheduler")

    def collector(self) -> Proc:
        return self.service("logs")

    async def web(self) -> None:
        r = connect(self.stack.redis_url)
        self.key = await records.create_api_key(r, "tests")
        await r.aclose()

        async def healthy(client: httpx.AsyncClient) -> bool:
            return (await client.get("/api/health")).status_code == 200

        public = f"--public-nats-url={self.stack.agent_nats_url}"
        self.url = await self._listening("web", healthy, public)
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
            # below uvicorn's 5 s keep-alive, so a request never races the server
            # closing an idle connection
            limits=httpx.Limits(keepalive_expiry=2),
        )

    async def trigger(self) -> str:
        """Start the webhook receiver; its base URL."""

        async def answers(client: httpx.AsyncClient) -> bool:
            await client.post("/hooks/github/none")
            return True

        return await self._listening("trigger", answers)

    async def _listening(
        self, name: str, up: Callable[[httpx.AsyncClient], Awaitable[bool]], *args: str
    ) -> str:
        """Start the HTTP service `name` on a free port; its base URL once `up` says so.
        Something else may take the port before the service listens on it (an outgoing
        connection's, the other test worker's): the service is then started on another."""
        for _ in range(PORT_TRIES):
            port = free_port()
            proc = self.service(name, "--port", str(port), *args)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            async with httpx.AsyncClient(base_url=url) as client:
                while time.monotonic() < deadline and proc.popen.poll() is None:
                    with contextlib.suppress(httpx.HTTPError):
                        # and not another's server on the port: this one would have said
                        if await up(client) and TAKEN not in proc.output():
                            return url
                    await asyncio.sleep(0.05)
            if TAKEN not in proc.output():
                break
            proc.kill()
        raise RuntimeError(f"the {name} service did not start:\n" + proc.output())

    async def agent(
        self,
        name: str,
        labels: list[str] | None = None,
        projects: list[str] | None = None,
        slots: int = 1,
        start: bool = True,
    ) -> AgentProc:
        made = await self.call(
            "POST",
            "/api/agents",
            json={
                "name": name,
                "labels": labels or [],
                "projects": projects or [],
            },
        )
        directory = self.tmp / f"agent-{name}"
        AgentConfig(made["id"], name, made["token"], made["nats_url"], made["ca"]).save(directory)
        agent = AgentProc(made["id"], directory)
        if start:
            await self.start_agent(agent, slots)
        return agent

    async def start_agent(
        self, agent: AgentProc, slots: int = 1, wait: bool = True, nats_url: str | None = None
    ) -> None:
        url = ["--nats-url", nats_url] if nats_url else []
        argv = ["agent", "start", "--slots", str(slots), "--dir", str(agent.dir), *url]
        agent.proc = self.spawn(f"agent-{agent.id}", *argv)
        if wait:
            await self.wait_for(lambda: self.agent_online(agent.id), 20, f"agent {agent.id}")

    async def agent_online(self, agent_id: str) -> bool:
        return bool((await self.call("GET", f"/api/agents/{agent_id}"))["online"])

    @contextlib.asynccontextmanager
    async def running(self, collector: bool = True) -> AsyncIterator[System]:
        """The dispatcher, the log collector (unless not wanted) and the web API, until
        the block ends; then every process of the system is stopped."""
        try:
            dispatcher = self.dispatcher()
            if collector:
                self.collector()
            await self.web()
            await self.ready(dispatcher)
            yield self
        finally:
            self.stop()
            if self.http is not None:
                await self.http.aclose()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.kill(signal.SIGTERM if proc.name.startswith("agent") else signal.SIGKILL)
        wait_dead([p.popen.pid for p in self.procs], 10)

    # --- API ------------------------------------------------------------------------

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.http is not None
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code < 400, f"{method} {path}: {response.text}"
        return response.json()

    async def project(self, name: str) -> None:
        await self.call("POST", "/api/projects", json={"name": name})

    async def pipeline(self, project: str, source: str) -> str:
        made = await self.call(
            "POST", f"/api/projects/{project}/pipelines", json={"source": source}
        )
        return str(made["name"])

    async def start_run(self, project: str, pipeline: str, **inputs: Any) -> str:
        made = await self.call(
            "POST", f"/api/projects/{project}/pipelines/{pipeline}/runs", json={"inputs": inputs}
        )
        return str(made["run"])

    async def run(self, run_id: str) -> dict[str, Any] | None:
        assert self.http is not None
        response = await self.http.get(f"/api/runs/{run_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    async def wait_run(
        self, run_id: str, timeout: float = 60, status: str | None = None
    ) -> dict[str, Any]:
        """Until the run is final (or has `status`)."""
        deadline = time.monotonic() + timeout
        current = None
        while time.monotonic() < deadline:
            current = await self.run(run_id)
            if current and (
                current["status"] == status
                if status
                else current["status"] not in ("queued", "running")
            ):
                return current
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"run {run_id} still {current and current['status']}: {current}" + self.logs()
        )

    async def holder(self, run_id: str, job: str, timeout: float = 20) -> str:
        """The agent that claimed `job`, once its claim is recorded (a first step that
        went with the job may run before that)."""
        found: list[str] = []

        async def claimed() -> bool:
            run = await self.run(run_id)
            agent = job_of(run, job).get("agent") if run else None
            found[:] = [agent["id"]] if agent else []
            return bool(found)

        await self.wait_for(claimed, timeout, f"the claim of {job}")
        return found[0]

    async def wait_for(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what}: not within {timeout} s" + self.logs())

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.output()[-3000:]}" for p in self.procs)


def step_of(run: dict[str, Any], job: str, index: int = 0) -> dict[str, Any]:
    found = next(j for j in run["jobs"] if j["key"] == job)
    step: dict[str, Any] = found["steps"][index]
    return step


def job_of(run: dict[str, Any], job: str) -> dict[str, Any]:
    found: dict[str, Any] = next(j for j in run["jobs"] if j["key"] == job)
    return found
