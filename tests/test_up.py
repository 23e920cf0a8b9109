"""`runyard up` and `just up`: print the URLs, stop cleanly with status 0 on Ctrl-C.

Ctrl-C is typed for real: the command runs on a pseudo-terminal and the test writes
the interrupt character, so the terminal sends SIGINT to its foreground process group.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import sys
import time
from pathlib import Path

import pytest

from services.stack import free_port
from tests.agent.actions_repos import datatorch_actions
from tests.conftest import ROOT


def _read_until(fd: int, marker: bytes | None, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal closed
            break
        if not chunk:
            break
        out += chunk
        if marker and marker in out:
            break
    return out


def ctrl_c_after_start(
    argv: list[str], marker: bytes = b"is up", extra_env: dict[str, str] | None = None
) -> tuple[int, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RUNYARD_NATS_URL", "RUNYARD_REDIS_URL")
    }
    env.update(extra_env or {})
    pid, fd = pty.fork()
    if pid == 0:  # the child: a fresh session with the pty as its terminal
        os.chdir(ROOT)
        os.execvpe(argv[0], argv, env)
    try:
        output = _read_until(fd, marker, 120)
        assert marker in output, output.decode(errors="replace")
        os.write(fd, b"\x03")
        output += _read_until(fd, None, 60)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def assert_clean_stop(status: int, output: str) -> None:
    assert status == 0, output
    assert "NATS   nats://127.0.0.1:" in output
    assert "Valkey redis://127.0.0.1:" in output
    assert "stopped" in output
    assert "Traceback" not in output


def up_env(tmp_path: Path) -> dict[str, str]:
    """The CLI's login goes to a temporary file; actions come from local repositories."""
    return {
        "RUNYARD_CONFIG": str(tmp_path / "config.json"),
        "RUNYARD_ACTIONS_BASE": datatorch_actions(tmp_path / "actions"),
        "RUNYARD_ALLOW_FILE_URLS": "1",
    }


def assert_example_ran(output: str, port: int) -> None:
    assert "add / Add Numbers: success  sum = 30" in output, output
    assert f"log in to http://127.0.0.1:{port} as admin, password in " in output, output
    assert f"Runyard is up at http://127.0.0.1:{port}" in output, output


def test_runyard_up(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "runyard", "up", "--data-dir", str(tmp_path / "data")]
    argv += ["--port", str(port), "--hooks-port", str(free_port())]
    status, output = ctrl_c_after_start(argv, extra_env=up_env(tmp_path))
    assert_clean_stop(status, output)
    assert_example_ran(output, port)


@pytest.mark.skipif(shutil.which("just") is None, reason="just is not installed")
def test_just_up(tmp_path: Path) -> None:
    port = free_port()
    argv = ["just", "up", "--data-dir", str(tmp_path / "data"), "--port", str(port)]
    argv += ["--hooks-port", str(free_port())]
    status, output = ctrl_c_after_start(argv, extra_env=up_env(tmp_path))
    assert_clean_stop(status, output)
    assert_example_ran(output, port)
