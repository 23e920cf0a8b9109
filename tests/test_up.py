"""`runyard up` and `just up`: print the URLs, run the example offline, keep every part
running, stop cleanly within 5 s of Ctrl-C, and come back on the same addresses.

Ctrl-C is typed for real: the command runs on a pseudo-terminal and the test writes
the interrupt character, so the terminal sends SIGINT to its foreground process group.
Every port is a free one (other `runyard up`s may run on this machine), and actions
come from nowhere: RUNYARD_ACTIONS_BASE names a port nothing listens on.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from agent.config import agent_environment
from services.stack import die_with_parent, free_port
from tests.conftest import ROOT
from tests.processes import wait_dead

STOP_WITHIN = 5.0  # seconds from Ctrl-C to `runyard up` gone, every part stopped


class Terminal:
    """A command on a pseudo-terminal, read as a person would watch it."""

    def __init__(self, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("RUNYARD_NATS_URL", "RUNYARD_REDIS_URL")
        }
        env.update(extra_env or {})
        self.output = b""
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a fresh session with the pty as its terminal
            os.chdir(ROOT)
            os.execvpe(argv[0], argv, env)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def read_until(self, marker: bytes | None, timeout: float) -> bool:
        """Read until `marker` shows (True), the terminal closes or time runs out."""
        deadline = time.monotonic() + timeout
        start = len(self.output)
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the terminal closed
                break
            if not chunk:
                break
            self.output += chunk
            if marker and marker in self.output[max(0, start - len(marker)) :]:
                return True
        return False

    def expect(self, marker: bytes, timeout: float = 120) -> None:
        assert self.read_until(marker, timeout), self.text

    def expect_all(self, markers: list[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(m in self.output for m in markers) and time.monotonic() < deadline:
            self.read_until(None, min(0.5, deadline - time.monotonic()))
        assert all(m in self.output for m in markers), self.text

    def ctrl_c(self) -> tuple[int, float]:
        """Type Ctrl-C; the exit status and the seconds until the command ended."""
        typed = time.monotonic()
        os.write(self.fd, b"\x03")
        self.read_until(None, 60)
        _, status = os.waitpid(self.pid, 0)
        took = time.monotonic() - typed
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status), took

    def kill(self) -> None:
        """After a failed test: nothing left running."""
        with contextlib.suppress(OSError):  # ended and reaped already
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def ctrl_c_after_start(
    argv: list[str], marker: bytes = b"is up", extra_env: dict[str, str] | None = None
) -> tuple[int, str]:
    term = Terminal(argv, extra_env)
    try:
        term.expect(marker)
        status, _ = term.ctrl_c()
    except BaseException:
        term.kill()
        raise
    return status, term.text


def up_env(tmp_path: Path) -> dict[str, str]:
    """The CLI's login goes to a temporary file; no action can be fetched from anywhere."""
    return {
        "RUNYARD_CONFIG": str(tmp_path / "config.json"),
        "RUNYARD_ACTIONS_BASE": f"http://127.0.0.1:{free_port()}/",
    }


def distinct_ports(count: int, avoid: int | None) -> list[int]:
    """Free ports, all different (each held open until all are found) and not `avoid`."""
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            if sock.getsockname()[1] == avoid:
                sock.close()
                continue
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def up_argv(data: Path, *more: str, nats_port: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "runyard", "up", "--data-dir", str(data)]
    web, hooks = distinct_ports(2, avoid=nats_port)
    argv += ["--port", str(web), "--hooks-port", str(hooks)]
    if nats_port:
        argv += ["--nats-port", str(nats_port)]
    return [*argv, *more]


def assert_clean_stop(status: int, took: float, output: str) -> None:
    assert status == 0, output
    assert "NATS   nats://127.0.0.1:" in output
    assert "Valkey redis://127.0.0.1:" in output
    assert "stopped in " in output
    # no service had to be killed (nats-server may be, once JetStream has shut down:
    # it waits on connections its auth callout holds; services.stack.SERVER_STOP)
    assert set(re.findall(r"(\S+) did not stop in time", output)) <= {"nats-server"}, output
    assert "Traceback" not in output, output
    assert took <= STOP_WITHIN, (took, output)


def assert_example_ran(output: str) -> None:
    assert "add / Add Numbers: success  sum = 30" in output, output
    assert " as admin, password in " in output, output
    assert "Runyard is up at http://127.0.0.1:" in output, output


def _children(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _up_and_stopped(term: Terminal) -> tuple[int, float]:
    """Ctrl-C, and every process `runyard up` had started is gone too."""
    parts = _children(term.pid)
    status, took = term.ctrl_c()
    assert wait_dead(parts, 1) == [], term.text
    return status, took


def test_runyard_up_offline(tmp_path: Path) -> None:
    """The example's action comes from its copy in examples/actions: no network."""
    term = Terminal(up_argv(tmp_path / "data", nats_port=free_port()), up_env(tmp_path))
    try:
        term.expect(b"is up")
        status, took = _up_and_stopped(term)
    except BaseException:
        term.kill()
        raise
    assert_clean_stop(status, took, term.text)
    assert_example_ran(term.text)


@pytest.mark.skipif(shutil.which("just") is None, reason="just is not installed")
def test_just_up(tmp_path: Path) -> None:
    argv = ["just", *up_argv(tmp_path / "data", nats_port=free_port())[3:]]
    term = Terminal(argv, up_env(tmp_path))
    try:
        term.expect(b"is up")
        status, took = term.ctrl_c()
    except BaseException:
        term.kill()
        raise
    assert_clean_stop(status, took, term.text)
    assert_example_ran(term.text)


# --- a server restart does not strand agents -----------------------------------------

OUTSIDE = """
name: Outside
jobs:
  work:
    runs-on: [outside]
    steps:
      - run: echo "ran on the agent made before the restart"
"""


def _api(tmp_path: Path) -> httpx.Client:
    saved = json.loads((tmp_path / "config.json").read_text())
    return httpx.Client(
        base_url=saved["host"], headers={"Authorization": f"Bearer {saved['api_key']}"}
    )


def _cli(tmp_path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "runyard", *args],
        env={**os.environ, "RUNYARD_CONFIG": str(tmp_path / "config.json")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def _get(api: httpx.Client, path: str) -> Any:
    """The JSON at `path`; {} while it is not there yet (a run just started)."""
    response = api.get(path)
    if response.status_code == 404:
        return {}
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    return response.json()


def _run_outside(tmp_path: Path) -> dict[str, Any]:
    with _api(tmp_path) as api:
        made = api.post("/api/projects/examples/pipelines", json={"source": OUTSIDE})
        assert made.status_code < 400, made.text
        started = api.post("/api/projects/examples/pipelines/Outside/runs", json={"inputs": {}})
        assert started.status_code < 400, started.text
        run_id = started.json()["run"]
        found: dict[str, Any] = {}

        def ended() -> bool:
            found.update(_get(api, f"/api/runs/{run_id}"))
            return found.get("status") not in (None, "queued", "running")

        _until(ended, 60, f"run {run_id}")
        return found


def test_a_restarted_up_keeps_its_nats_port_and_its_agents(tmp_path: Path) -> None:
    data, agent_dir = tmp_path / "data", tmp_path / "outside"
    nats_port = free_port()
    env = up_env(tmp_path)
    first = Terminal(up_argv(data, "--example", "", nats_port=nats_port), env)
    agent: subprocess.Popen[bytes] | None = None
    second: Terminal | None = None
    try:
        first.expect(b"is up")
        _cli(
            tmp_path,
            *("agent", "create", "--name", "outside", "--labels", "outside"),
            *("--project", "examples", "--dir", str(agent_dir)),
        )
        saved = (agent_dir / "agent.json").read_bytes()
        agent_id = json.loads(saved)["id"]
        assert f"nats://127.0.0.1:{nats_port}" in json.loads(saved)["nats_url"]
        parent = os.getpid()
        with (tmp_path / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "runyard", "agent", "start", "--dir", str(agent_dir)],
                env=agent_environment(dict(os.environ)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(parent),
            )
        with _api(tmp_path) as api:
            _until(lambda: _get(api, f"/api/agents/{agent_id}")["online"], 30, "online")
        status, took = _up_and_stopped(first)
        assert_clean_stop(status, took, first.text)

        # the same data directory, no --nats-port: the same port, and the agent, never
        # touched, reconnects by itself and runs a job
        second = Terminal(up_argv(data, "--example", ""), env)
        second.expect(b"is up")
        assert f"NATS   nats://127.0.0.1:{nats_port} (agents)" in second.text, second.text
        run = _run_outside(tmp_path)
        assert run["status"] == "success", (run, (tmp_path / "agent.log").read_text())
        assert run["jobs"][0]["agent"]["id"] == agent_id
        assert (agent_dir / "agent.json").read_bytes() == saved
        status, took = _up_and_stopped(second)
        assert_clean_stop(status, took, second.text)
    finally:
        for term in (first, second):
            if term is not None:
                term.kill()
        if agent is not None:
            agent.kill()
            agent.wait()


def test_up_restarts_a_part_that_dies_and_says_so(tmp_path: Path) -> None:
    term = Terminal(
        up_argv(tmp_path / "data", "--example", "", nats_port=free_port()), up_env(tmp_path)
    )
    try:
        term.expect(b"is up")
        parts = {" ".join(p.cmdline()): p for p in psutil.Process(term.pid).children()}
        dispatcher = next(p for name, p in parts.items() if "serve dispatcher" in name)
        nats = next(p for p in parts.values() if p.name() == "nats-server")
        dispatcher.kill()
        nats.kill()
        term.expect_all([b"dispatcher is running again", b"nats-server is running again"], 30)
        assert "dispatcher exited with status -9" in term.text, term.text
        assert "nats-server exited with status -9" in term.text, term.text
        # and the system works on: the example runs on the reconnected local agent
        with _api(tmp_path) as api:
            path = "/api/projects/examples/pipelines/Adding%20Numbers/runs"
            run_id = api.post(path, json={"inputs": {}}).json()["run"]
            _until(
                lambda: _get(api, f"/api/runs/{run_id}").get("status") == "success",
                60,
                "the example after the restarts",
            )
        status, took = _up_and_stopped(term)
    except BaseException:
        term.kill()
        raise
    assert_clean_stop(status, took, term.text)


def refused(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`runyard up` run to its end (an error, before anything started)."""
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **up_env(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_nats_port_in_use_names_the_option(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = refused(tmp_path, up_argv(tmp_path / "data", nats_port=port))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"nats-server cannot listen on 127.0.0.1:{port}: the port is in use" in done.stderr
    assert "start with --nats-port PORT" in done.stderr


def test_a_cluster_is_local_only(tmp_path: Path) -> None:
    argv = up_argv(tmp_path / "data", "--cluster", "3", "--public", "ci.example.com")
    done = refused(tmp_path, argv)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--cluster runs on this machine only: leave out --public" in done.stderr
