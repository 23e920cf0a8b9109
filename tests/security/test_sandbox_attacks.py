"""Attacks on a job's sandbox and its spawners (agent/spawner.py, agent/namespaces.py):
each test performs the attack and fails if it works."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
from nats.aio.msg import Msg

from agent import reaper
from agent.launcher import Child, JobSpawner, Launcher
from agent.process import run_process
from agent.sandbox import Sandbox
from schemas.status import Status
from tests.agent.test_jobs import Delivery, claimed, made_jobs, step_assign
from tests.processes import alive, wait_dead


def _pids(where: Callable[[Path], bool]) -> list[int]:
    """The pids of the processes whose /proc directory `where` picks."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and where(entry):
                found.append(int(entry.name))
    return found


def _children(parent: int) -> list[int]:
    def child(entry: Path) -> bool:
        stat = (entry / "stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[1]) == parent

    return _pids(child)


def _running(marker: str) -> list[int]:
    """The pids of processes whose command line is `marker`."""
    argv = marker.replace(" ", "\0").encode() + b"\0"
    return _pids(lambda entry: (entry / "cmdline").read_bytes() == argv)


def _waiting(find: Callable[[], list[int]]) -> list[int]:
    """What `find` finds, waiting up to 10 s for it to find anything."""
    for _ in range(200):
        if found := find():
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
    standbys = await asyncio.to_thread(
        _waiting, lambda: [pid for pid in _children(server) if pid != running.pid]
    )
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
    secret = tmp_path / "secrets"  # hidden, as ~/.git-credentials or a --hide file
    secret.write_text("old-token")
    first = _workspace(sandbox, "a")
    job = fork_server.job(first)  # takes the standby made at start; a new one covers the file
    assert "old-token" not in await _output(job, first, f"cat {secret}")
    job.close()
    replacement = tmp_path / "secrets.new"
    replacement.write_text("new-token")
    replacement.replace(secret)  # how git credential-store and npm save theirs
    second = _workspace(sandbox, "b")
    job = fork_server.job(second)
    assert "new-token" not in await _output(job, second, f"cat {secret}")
    job.close()


async def test_a_process_that_left_the_step_s_session_dies_when_the_job_is_cancelled(
    sandboxed: tuple[Launcher, Sandbox],
) -> None:
    fork_server, sandbox = sandboxed
    workspace = _workspace(sandbox, "a")
    job = fork_server.job(workspace)
    lines: list[str] = []
    cancel = asyncio.Event()
    script = "setsid sleep 607 </dev/null >/dev/null 2>&1 & echo started; exec sleep 608"
    step = asyncio.ensure_future(
        run_process(
            ["bash", "-c", script],
            cwd=workspace,
            env={"PATH": os.environ["PATH"]},
            sink=lambda _stream, line: lines.append(line),
            cancel=cancel,
            grace=1,
            spawn=job.spawn,
        )
    )
    escaped = await asyncio.to_thread(_waiting, lambda: _running("sleep 607"))
    assert escaped
    cancel.set()
    assert (await step).status == Status.CANCELLED
    job.close()  # the cancelled job ends (agent/jobs.py, also when it is revoked)
    try:
        assert await asyncio.to_thread(wait_dead, escaped, 10) == []
    finally:
        for pid in escaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_step_cannot_reach_sockets_in_the_user_s_runtime_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"  # stands for /run/user/<uid>: D-Bus, systemd --user, agents
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(runtime / "bus"))
    listening.listen(1)
    sandbox = Sandbox(tmp_path / "agent")
    if (why := sandbox.probe()) is not None:
        pytest.skip(f"no user namespaces here: {why}")
    fork_server = Launcher(sandbox)
    fork_server.start()
    try:
        workspace = _workspace(sandbox, "a")
        job = fork_server.job(workspace)
        connect = f"import socket; socket.socket(socket.AF_UNIX).connect({str(runtime / 'bus')!r})"
        script = f"{sys.executable} -c {shlex.quote(connect)} && echo in"
        said = await _output(job, workspace, script)
        assert said == ""
        job.close()
    finally:
        fork_server.stop()
        listening.close()


async def test_the_agent_s_token_replaced_by_rename_during_a_job_stays_hidden_from_it(
    sandboxed: tuple[Launcher, Sandbox], tmp_path: Path
) -> None:
    fork_server, sandbox = sandboxed
    agent = tmp_path / "agent"
    (agent / "agent.json").write_text("old-token")
    workspace = _workspace(sandbox, "a")
    job = fork_server.job(workspace)
    assert "old-token" not in await _output(job, workspace, f"cat {agent}/agent.json")
    replacement = agent / "agent.tmp"
    replacement.write_text("new-token")  # as AgentConfig.save writes it, then renames
    assert "new-token" not in await _output(job, workspace, f"cat {replacement}")
    replacement.replace(agent / "agent.json")
    assert "new-token" not in await _output(job, workspace, f"cat {agent}/agent.json")
    assert await _output(job, workspace, f"ls {agent}") == "cache\nwork\n"
    job.close()


async def test_a_process_that_left_the_step_s_session_dies_when_the_attempt_is_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reaper, "cgroup_base", lambda own, name: None)  # the namespace alone
    sandbox = Sandbox(tmp_path / "agent")
    if (why := sandbox.probe()) is not None:
        pytest.skip(f"no user namespaces here: {why}")
    async with made_jobs(tmp_path, Launcher(sandbox), sandbox.work) as jobs:
        await claimed(jobs, "r9")
        script = "setsid sleep 609 </dev/null >/dev/null 2>&1 & exec sleep 610"
        jobs.step_assigned(step_assign("r9", script), cast(Msg, Delivery()))
        escaped = await asyncio.to_thread(_waiting, lambda: _running("sleep 609"))
        assert escaped
        try:
            await jobs.revoked("r9|j|1")  # the attempt is no longer this agent's
            assert await asyncio.to_thread(wait_dead, escaped, 10) == []
        finally:
            for pid in escaped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def test_a_step_cannot_write_the_kernel_s_settings_through_its_proc(
    sandboxed: tuple[Launcher, Sandbox],
) -> None:
    """Where the agent runs as root, its steps are root too (in their own user
    namespace, with the host's uid): the files of /proc that set the machine's kernel
    (its host name, the core dump handler, SysRq) must still be read-only to them.
    Each is opened for writing and closed, never written."""
    fork_server, sandbox = sandboxed
    workspace = _workspace(sandbox, "a")
    job = fork_server.job(workspace)
    kernel = ["/proc/sys/kernel/hostname", "/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger"]
    script = "; ".join(f"(: >> {path}) 2>/dev/null && echo {path}" for path in kernel)
    assert await _output(job, workspace, script + "; : >> /proc/self/comm && echo own") == "own\n"
    job.close()
