"""The agent's side of agent/spawner.py: one fork server per agent and one job spawner
per job, through which every step of that job starts.

The job spawner is asked for when the job is claimed, so building its sandbox (several
milliseconds) overlaps the claim's round trip instead of delaying the first step. Steps
then cost the agent two pipes and one message: no fork of the agent, no `preexec_fn`.

A step without a sandbox (and any other process of the agent's user) can signal these
processes like any other of that user (a sandboxed step sees only its job's PID
namespace; agent/sandbox.py lists this limit): a fork server found dead is started
again for the next job; a job spawner that dies fails the steps waiting on it; one
that stops answering while a step is being stopped is killed (`Child.kill`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent import spawner
from agent.sandbox import Sandbox

log = logging.getLogger("runyard.agent")

READY_WAIT = 60.0  # seconds a job's spawner may take to build its sandbox
ROOT = str(Path(__file__).resolve().parent.parent)
# without site-packages (-S) or the environment (-I): the spawner needs the stdlib only
BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from agent.spawner import main; main(sys.argv[1:])"
)


class Child:
    """A step's process, started by a job spawner (what `process.Child` asks for)."""

    def __init__(
        self,
        pid: int,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        exited: asyncio.Future[int],
        job: JobSpawner,
    ) -> None:
        self.pid = pid
        self.stdout: asyncio.StreamReader | None = stdout
        self.stderr: asyncio.StreamReader | None = stderr
        self.returncode: int | None = None
        self._exited = exited
        self._job = job

    async def wait(self) -> int:
        self.returncode = await asyncio.shield(self._exited)
        return self.returncode

    def kill(self) -> None:
        """The last resort when the exit is not reported: end the job spawner (which
        fails every wait on it)."""
        self._job.kill()


class JobSpawner:
    """One job's spawner: `spawn` starts a step in the job's sandbox."""

    def __init__(
        self,
        sock: socket.socket | None,
        error: str | None = None,
        stuck: Callable[[], None] | None = None,
        started: Callable[[], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[int] = loop.create_future()
        self.ready.add_done_callback(lambda f: f.exception())  # read, even if never awaited
        self.sock = sock
        self.pid: int | None = None
        self.starting: deque[asyncio.Future[int]] = deque()
        self.exits: dict[int, asyncio.Future[int]] = {}
        self.pending = b""
        self.stuck = stuck  # what to do when it never says it is ready
        self.started = started  # once, when its first step has started (or it closes)
        if sock is None:
            self.ready.set_exception(OSError(0, error or "no spawner"))
            return
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    async def spawn(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> Child:
        """Start `argv`; OSError when it cannot start (its reason as the spawner said)."""
        if not self.ready.done():  # a wait_for costs a turn of the loop even when done
            try:
                await asyncio.wait_for(asyncio.shield(self.ready), READY_WAIT)
            except TimeoutError:
                if self.stuck is not None:
                    self.stuck()
                self.kill()
                raise OSError(0, "the job's spawner did not start") from None
        self.ready.result()  # its error, if it failed
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        started: asyncio.Future[int] = loop.create_future()
        try:
            request = {"argv": list(argv), "cwd": str(cwd.absolute()), "env": dict(env)}
            payload = spawner.frame(request, 2)
            self.starting.append(started)
            try:
                sent = socket.send_fds(self.sock, [payload], [out_w, err_w])
            except OSError:
                self.starting.remove(started)
                raise
            if sent < len(payload):
                await loop.sock_sendall(self.sock, payload[sent:])
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        # the pipes are taken into the loop while the spawner starts the step
        (out, out_pipe), (err, err_pipe) = await _reader(out_r), await _reader(err_r)
        try:
            pid = await started
        except BaseException:
            out_pipe.close()
            err_pipe.close()
            raise
        return Child(pid, out, err, self.exits[pid], self)

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone()
            return
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            self._message(json.loads(line))

    def _message(self, message: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        if not self.ready.done():
            if "ready" in message:
                self.pid = int(message["ready"])
                self.ready.set_result(self.pid)
            else:
                self.ready.set_exception(OSError(0, f"no sandbox: {message.get('error')}"))
        elif "exit" in message:
            exited = self.exits.setdefault(int(message["exit"]), loop.create_future())
            if not exited.done():
                exited.set_result(int(message["code"]))
        elif self.starting:
            started = self.starting.popleft()
            if "pid" in message:
                self.exits.setdefault(int(message["pid"]), loop.create_future())
                started.set_result(int(message["pid"]))
                self._first_started()
            else:
                started.set_exception(OSError(int(message.get("errno", 0)), message["error"]))

    def _gone(self) -> None:
        """The spawner ended: what waited on it ends too (a step it started is dead,
        killed with it)."""
        self.close()
        if not self.ready.done():
            self.ready.set_exception(OSError(0, "the job's spawner ended"))
        while self.starting:
            self.starting.popleft().set_exception(OSError(0, "the job's spawner ended"))
        for exited in self.exits.values():
            if not exited.done():
                exited.set_result(-signal.SIGKILL)

    def kill(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
        self._gone()

    def _first_started(self) -> None:
        if self.started is not None:
            started, self.started = self.started, None
            started()

    def close(self) -> None:
        """The job ended: the spawner exits (and what is left of its steps with it)."""
        self._first_started()
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


async def _reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    pipe, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0)
    )
    return reader, pipe


class Launcher:
    """The agent's fork server. Start it from the agent's main thread (its parent-death
    signal follows the thread that started it)."""

    def __init__(self, sandbox: Sandbox | None) -> None:
        self.sandbox = sandbox
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [ROOT, str(theirs.fileno()), str(os.getpid())]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", BOOT, *argv],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env={},
                close_fds=True,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self._standby()  # ready for the first job

    def _standby(self) -> None:
        """Ask the fork server for a standby sandbox for the next job."""
        if self.sandbox is not None and self.sandbox.enabled and self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.send(spawner.frame({"sandbox": self.sandbox.base_plan()}))

    def job(self, workspace: Path) -> JobSpawner:
        """A spawner for the job in `workspace` (it may still be building the sandbox;
        `JobSpawner.ready` says when it is done, or why it failed)."""
        sandbox = self.sandbox
        try:
            plan = sandbox.plan(workspace) if sandbox is not None and sandbox.enabled else None
        except ValueError as exc:
            return JobSpawner(None, str(exc))
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                log.warning("the step spawner ended (%s); starting it again", self.proc.returncode)
            self.stop()
            self.start()
        assert self.sock is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        payload = spawner.frame({"sandbox": plan}, 1)
        try:
            sent = socket.send_fds(self.sock, [payload], [theirs.fileno()])
        except OSError:  # full: the fork server is not reading (it was stopped)
            sent = 0
        finally:
            theirs.close()
        if sent < len(payload):
            ours.close()
            if self.proc is not None:
                self.proc.kill()  # a cut message would garble the next; start afresh
            return JobSpawner(None, "the step spawner does not answer")
        return JobSpawner(ours, stuck=self._stuck, started=self._standby if plan else None)

    def _stuck(self) -> None:
        """A job's spawner never came: the fork server is stopped or hangs; the next
        job starts a new one."""
        if self.proc is not None:
            log.warning("the step spawner does not answer; killing it")
            self.proc.kill()

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
