"""Steps start from their job's spawner (agent/spawner.py): in the job's sandbox, dying
with the agent, and a spawner a step has stopped or killed does not hang the agent."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import launcher as launching
from agent.launcher import Child, JobSpawner, Launcher
from agent.sandbox import Sandbox
from tests.conftest import ROOT
from tests.processes import alive, wait_dead


@pytest.fixture
async def fork_server() -> AsyncIterator[Launcher]:
    made = Launcher(None)
    made.start()
    yield made
    made.stop()


async def started(job: JobSpawner, workspace: Path, script: str) -> Child:
    return await job.spawn(["bash", "-c", script], workspace, {"PATH": os.environ["PATH"]})


async def test_a_step_runs_in_a_session_of_its_own_with_its_output_on_pipes(
    fork_server: Launcher, tmp_path: Path
) -> None:
    job = fork_server.job(tmp_path)
    child = await started(job, tmp_path, "echo $PPID $(ps -o sid= $$); pwd; echo oops >&2; exit 7")
    assert child.stdout is not None and child.stderr is not None
    out, err = await child.stdout.read(), await child.stderr.read()
    assert await child.wait() == 7
    parent, session = out.decode().split("\n")[0].split()
    assert (int(parent), int(session)) == (job.pid, child.pid)
    assert out.decode().split("\n")[1] == str(tmp_path)
    assert err == b"oops\n"
    job.close()


async def test_a_program_that_is_not_there_says_so(fork_server: Launcher, tmp_path: Path) -> None:
    job = fork_server.job(tmp_path)
    with pytest.raises(OSError) as raised:
        await job.spawn(["no-such-program-here"], tmp_path, {"PATH": "/usr/bin:/bin"})
    assert raised.value.errno == errno.ENOENT
    with pytest.raises(OSError, match="illegal environment variable name"):
        await job.spawn(["true"], tmp_path, {"PATH": "/usr/bin:/bin", "A=B": "x"})
    with pytest.raises(OSError, match="no command"):
        await job.spawn([], tmp_path, {"PATH": "/usr/bin:/bin"})
    child = await started(job, tmp_path, "exit 0")  # the spawner carries on
    assert await child.wait() == 0
    job.close()


async def test_steps_die_with_the_fork_server_and_their_spawner(
    fork_server: Launcher, tmp_path: Path
) -> None:
    job = fork_server.job(tmp_path)
    child = await started(job, tmp_path, "exec sleep 307")
    assert fork_server.proc is not None and job.pid is not None
    os.kill(fork_server.proc.pid, signal.SIGKILL)  # as when the agent is killed
    assert await asyncio.to_thread(wait_dead, [job.pid, child.pid], 10) == []
    assert await child.wait() == -signal.SIGKILL
    fork_server.proc.wait()


async def test_a_stopped_fork_server_fails_the_step_and_is_replaced(
    fork_server: Launcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launching, "READY_WAIT", 0.5)
    assert fork_server.proc is not None
    stopped = fork_server.proc.pid
    os.kill(stopped, signal.SIGSTOP)  # what a step of the agent's user could do
    with pytest.raises(OSError, match="did not start"):
        await started(fork_server.job(tmp_path), tmp_path, "exit 0")
    assert await asyncio.to_thread(wait_dead, [stopped], 10) == []
    job = fork_server.job(tmp_path)  # a new fork server
    assert await (await started(job, tmp_path, "exit 0")).wait() == 0
    job.close()


async def test_a_sandboxed_step_cannot_look_into_its_spawner(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "agent")
    if (why := sandbox.probe()) is not None:
        pytest.skip(f"no user namespaces here: {why}")
    workspace = tmp_path / "agent" / "work" / "r" / "j"
    workspace.mkdir(parents=True)
    fork_server = Launcher(sandbox)
    fork_server.start()
    try:
        job = fork_server.job(workspace)
        # its spawner is outside its PID namespace ($PPID is 0); the namespace's init,
        # a fork of the spawner, is as far out of reach
        script = "cat /proc/1/environ; ls ../..; cat ../../../agent.json; touch ../../x"
        child = await started(job, workspace, script)
        assert child.stdout is not None and child.stderr is not None
        out, err = await child.stdout.read(), await child.stderr.read()
        assert await child.wait() != 0
        assert out.decode().split() == ["r"]  # only its own run's folder
        said = err.decode()
        assert "environ: Permission denied" in said
        assert not (tmp_path / "agent" / "work" / "x").exists()
        assert job.pid is not None and alive(job.pid)
        job.close()
    finally:
        fork_server.stop()


async def test_a_secret_made_after_the_standby_sandbox_is_still_hidden(tmp_path: Path) -> None:
    secret = tmp_path / "later"
    sandbox = Sandbox(tmp_path / "agent", [secret])
    if (why := sandbox.probe()) is not None:
        pytest.skip(f"no user namespaces here: {why}")
    workspace = tmp_path / "agent" / "work" / "r" / "j"
    workspace.mkdir(parents=True)
    fork_server = Launcher(sandbox)
    fork_server.start()  # its standby is made now, before the secret exists
    try:
        await asyncio.sleep(0.5)
        secret.write_text("s3cret")
        job = fork_server.job(workspace)
        child = await started(job, workspace, f"cat {secret}")
        assert child.stdout is not None
        assert b"s3cret" not in await child.stdout.read()
        await child.wait()
        job.close()
    finally:
        fork_server.stop()


async def test_a_sandboxed_step_is_spawned_from_its_own_path_and_dies_with_its_spawner(
    tmp_path: Path,
) -> None:
    sandbox = Sandbox(tmp_path / "agent")
    if (why := sandbox.probe()) is not None:
        pytest.skip(f"no user namespaces here: {why}")
    workspace = tmp_path / "agent" / "work" / "r" / "j"
    (workspace / "bin").mkdir(parents=True)
    hello = workspace / "bin" / "hello"
    session = "awk '{print $6 == $1}' /proc/$$/stat"  # 1: its own session's leader
    hello.write_text(f'#!/bin/bash\necho "hello from $(pwd)"\n{session}\n')
    hello.chmod(0o755)
    fork_server = Launcher(sandbox)
    fork_server.start()
    try:
        job = fork_server.job(workspace)
        path = {"PATH": f"{workspace / 'bin'}:/usr/bin:/bin"}  # the step's, not the spawner's
        child = await job.spawn(["hello"], workspace, path)
        assert child.stdout is not None
        assert (await child.stdout.read()).decode().split("\n")[:2] == [
            f"hello from {workspace}",
            "1",
        ]
        assert await child.wait() == 0
        with pytest.raises(OSError) as raised:
            await job.spawn(["no-such-program-here"], workspace, path)
        assert raised.value.errno == errno.ENOENT
        with pytest.raises(OSError, match="illegal environment variable name"):
            await job.spawn(["true"], workspace, {**path, "A=B": "x"})
        with pytest.raises(OSError, match="no command"):
            await job.spawn([], workspace, path)
        # the signals the spawner's Python ignores are a step's own again
        child = await started(job, workspace, "grep SigIgn /proc/self/status")
        assert child.stdout is not None
        ignored = int((await child.stdout.read()).split()[1], 16)
        assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGINT - 1)), hex(ignored)
        await child.wait()
        child = await started(job, workspace, "exec sleep 308")
        assert fork_server.proc is not None and job.pid is not None
        os.kill(fork_server.proc.pid, signal.SIGKILL)  # its PID namespace ends with it
        assert await asyncio.to_thread(wait_dead, [job.pid, child.pid], 10) == []
        fork_server.proc.wait()
    finally:
        fork_server.stop()


GIVE_UP = """
import asyncio, sys
from pathlib import Path
from agent.launcher import Launcher

async def main() -> None:
    launcher = Launcher(None)
    launcher.start()
    for _ in range(20):
        launcher.job(Path(sys.argv[1])).close()
    job = launcher.job(Path(sys.argv[1]))  # and the fork server carries on
    child = await job.spawn(["true"], Path(sys.argv[1]), {})
    print("exit", await child.wait())
    job.close()
    await asyncio.sleep(0.5)  # the given-up spawners have ended
    launcher.stop()

asyncio.run(main())
"""


def test_a_job_given_up_before_its_spawner_is_ready_leaves_no_traceback(tmp_path: Path) -> None:
    """A job that fails at once (a refused checkout) is closed while its spawner is
    still being made: the spawner then finds the agent gone and ends, quietly (CI once
    showed its BrokenPipeError on the agent's stderr, which the fork server shares)."""
    done = subprocess.run(
        [sys.executable, "-c", GIVE_UP, str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "exit 0\n"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
