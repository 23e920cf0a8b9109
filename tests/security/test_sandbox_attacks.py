"""Attacks on a job's sandbox and its spawners (agent/spawner.py, agent/namespaces.py):
each test performs the attack and fails if it works."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.launcher import Child, JobSpawner, Launcher
from agent.sandbox import Sandbox
from tests.processes import alive, wait_dead


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def _others(parent: int, known: int) -> list[int]:
    """The children of `parent` but `known`, waiting up to 10 s for one to be there."""
    for _ in range(200):
        if found := [pid for pid in _children(parent) if pid != known]:
            return found
        time.sleep(0.05)
    return []


@pytest.fixture
async def sandboxed(tmp_path: Path) -> AsyncIterator[tuple[Launcher, Sandbox]]:
    sandbox = Sandbox(tmp_path / "agent", [tmp_path / "secrets"])
    if (why := sandbox.probe()) is not None:
        pytest.skip(f"no user namespaces here: {why}")
    fork_server = Launcher(sandbox)
    fork_server.start()
    yield fork_server, sandbox
    fork_server.stop()


def _workspace(sandbox: Sandbox, name: str) -> Path:
    workspace = sandbox.work / "r" / name
    workspace.mkdir(parents=True)
    return workspace


async def _run(job: JobSpawner, workspace: Path, script: str) -> Child:
    return await job.spawn(["bash", "-c", script], workspace, {"PATH": os.environ["PATH"]})


async def _output(job: JobSpawner, workspace: Path, script: str) -> str:
    child = await _run(job, workspace, script)
    assert child.stdout is not None
    out = await child.stdout.read()
    await child.wait()
    return out.decode()


async def test_a_killed_standby_does_not_end_the_fork_server_nor_other_jobs(
    sandboxed: tuple[Launcher, Sandbox],
) -> None:
    fork_server, sandbox = sandboxed
    first = _workspace(sandbox, "a")
    running = fork_server.job(first)
    step = await _run(running, first, "exec sleep 301")
    assert fork_server.proc is not None and running.pid is not None
    server = fork_server.proc.pid
    # the next job's standby, forked when the first job took the one made at start
    standbys = await asyncio.to_thread(_others, server, running.pid)
    assert standbys
    for pid in standbys:
        os.kill(pid, signal.SIGKILL)  # any step could: the same user
    assert await asyncio.to_thread(wait_dead, standbys, 10) == []
    second = _workspace(sandbox, "b")
    job = fork_server.job(second)
    assert await _output(job, second, "echo ran") == "ran\n"
    assert fork_server.proc.poll() is None and fork_server.proc.pid == server
    assert alive(step.pid)
    for each in (running, job):
        each.close()


async def test_a_hidden_file_replaced_by_rename_while_the_standby_waits_stays_hidden(
    sandboxed: tuple[Launcher, Sandbox], tmp_path: Path
) -> None:
    fork_server, sandbox = sandboxed
    token = tmp_path / "agent" / "agent.json"
    token.write_text("old-token")
    first = _workspace(sandbox, "a")
    job = fork_server.job(first)  # takes the standby made at start; a new one covers the file
    assert "old-token" not in await _output(job, first, f"cat {token}")
    job.close()
    replacement = tmp_path / "agent" / "agent.json.new"
    replacement.write_text("new-token")
    replacement.replace(token)  # how the agent saves its config (and git, npm: theirs)
    second = _workspace(sandbox, "b")
    job = fork_server.job(second)
    assert "new-token" not in await _output(job, second, f"cat {token}")
    job.close()
