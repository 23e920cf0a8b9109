"""`runyard serve SERVICE` is a well-behaved daemon: every service, started for real,
exits within 3 s of SIGTERM with status 0, and says in its log that it is stopping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.stack import Stack, die_with_parent, free_port
from services.store.crypto import new_key
from tests.conftest import ROOT

STOP_WITHIN = 3.0
SERVICES = {
    "dispatcher": (),
    "logs": (),
    "scheduler": (),
    "trigger": ("--port",),
    "web": ("--port",),
}


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    parent = os.getpid()
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "runyard", *argv],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(parent),
        )


def _wait_ready(logs: dict[str, Path], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(" ready" in path.read_text() for path in logs.values()):
            return
        time.sleep(0.1)
    raise AssertionError({name: path.read_text()[-2000:] for name, path in logs.items()})


def _stop_times(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, float]:
    """SIGTERM to all at once; each one's seconds to exit (a hung one is killed)."""
    sent = time.monotonic()
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    took = {}
    for name, proc in procs.items():
        try:
            proc.wait(STOP_WITHIN + 7)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        took[name] = time.monotonic() - sent
    return took


def test_every_service_stops_within_3_s_of_sigterm(stack: Stack, tmp_path: Path) -> None:
    key = new_key()
    procs, logs = {}, {}
    for name, options in SERVICES.items():
        env = {**os.environ, **stack.service_env(name), "RUNYARD_SECRET_KEY": key}
        argv = ["serve", name, *(f"{o}={free_port()}" for o in options)]
        logs[name] = tmp_path / f"{name}.log"
        procs[name] = _spawn(argv, env, logs[name])
    try:
        _wait_ready(logs)
        # past one idle fetch cycle (5 s): its late "request timeout" used to hang the
        # stop of the dispatcher and the collector until they were killed
        time.sleep(6)
        took = _stop_times(procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, proc in procs.items():
        output = logs[name].read_text()
        assert took[name] < STOP_WITHIN, (name, took[name], output[-2000:])
        assert f"{name} stopping" in output and f"{name} stopped" in output, output[-2000:]
        assert "Traceback" not in output, output
        # uvicorn ends on the signal it was sent once it has shut down cleanly
        assert proc.returncode in (0, -signal.SIGTERM), (name, proc.returncode)


def test_a_service_without_nats_stops_at_once(tmp_path: Path) -> None:
    """Still connecting (no broker there yet) is no reason to ignore SIGTERM."""
    env = {**os.environ, "RUNYARD_SECRET_KEY": new_key()}
    nowhere = f"nats://127.0.0.1:{free_port()}"
    log = tmp_path / "logs.log"
    proc = _spawn(["serve", "logs", "--nats-url", nowhere], env, log)
    time.sleep(2)
    took = _stop_times({"logs": proc})["logs"]
    assert took < STOP_WITHIN, log.read_text()
