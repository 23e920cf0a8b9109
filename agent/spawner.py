"""Starts steps' processes from inside their job's sandbox, so that the agent itself
forks nothing per step (agent/sandbox.py says what the sandbox is, agent/launcher.py
is the agent's side).

Three generations, each killed (SIGKILL, `PR_SET_PDEATHSIG`) when its parent dies:

1. the **fork server**, `python -I -S` running `main` (this module and
   agent/namespaces.py: standard library only, ~12 MB), started once with the agent;
2. a **job spawner** per job, forked by the fork server when the agent sends it a plan
   and one end of a socket pair: it builds the job's user and mount namespaces (when
   the plan has a sandbox; agent/namespaces.py), makes itself undumpable (steps can
   neither trace it nor read its memory) and serves that socket until the agent closes
   it;
3. a **step**: started by the job spawner in a session of its own, its output on the
   pipes the agent passed, exec'd with the environment the agent sent; spawned
   (`posix_spawn`) in a sandbox, whose PID namespace it dies with, else forked (it
   sets its own parent-death signal).

Forking an 11 MB process costs a fraction of forking the agent, and the agent's own
spawns need no `preexec_fn` any more. The fork server also keeps a **standby**: a child
that has already made the half of a sandbox every job shares, with the job's PID
namespace (`prepare`), and waits; the next job's spawner is that child, which only adds
the job's workspace and locks the mounts (`finish`). The agent asks for the next
standby once a job's first step has started, so making it does not compete with that
job's sandbox and first step for the CPU. A standby is used only if the hidden paths
it covers are still all that exist, each still the same file (a credential file made
since would not be covered, nor one renamed over the covered one: a fresh sandbox is
built instead). A standby that died is replaced by a fresh fork as well.

Wire (job socket, a stream): agent → spawner `<length><count of descriptors><JSON>`
(`frame`), here with the step's stdout and stderr attached (SCM_RIGHTS); spawner →
agent one JSON object a line:
`{"ready": pid}` or `{"error": ...}` once, then per step `{"pid": n}` or
`{"error": ..., "errno": n}`, and `{"exit": pid, "code": n}` when it ends (`code` as
asyncio gives it: negative for a signal). The fork server's socket takes the plans in
the same framing, the job's socket attached (without one: the plan for a standby).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import selectors
import signal
import socket
import struct
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.namespaces import (
    covers,
    die_with_parent,
    enter,
    finish,
    prepare,
    reap_all,
    undumpable,
)

HEADER = struct.Struct(">IB")  # the body's length, the descriptors sent with it
MAX_FDS = 4


# --- the wire -----------------------------------------------------------------------


class Reader:
    """Framed messages from a stream socket, each with the descriptors sent with it (a
    read may hold several messages, and their descriptors come in the same order)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.fds: list[int] = []

    def buffered(self) -> tuple[dict[str, Any], list[int]] | None:
        if len(self.data) < HEADER.size:
            return None
        size, count = HEADER.unpack_from(self.data)
        end = HEADER.size + size
        if len(self.data) < end or len(self.fds) < count:
            return None
        body = bytes(self.data[HEADER.size : end])
        del self.data[:end]
        fds, self.fds = self.fds[:count], self.fds[count:]
        return json.loads(body), fds

    def next(self) -> tuple[dict[str, Any], list[int]] | None:
        """The next message (None: the socket closed)."""
        while (found := self.buffered()) is None:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, MAX_FDS)
            for fd in fds:
                os.set_inheritable(fd, False)
            self.fds += fds
            if not data:
                return None
            self.data += data
        return found


def frame(message: dict[str, Any], fds: int = 0) -> bytes:
    """`message` as sent, with `fds` descriptors attached to it."""
    body = json.dumps(message).encode()
    return HEADER.pack(len(body), fds) + body


def reply(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


# --- a job spawner ------------------------------------------------------------------

# What the Python of the fork server ignores (SIGINT: a terminal's Ctrl-C is the
# agent's) and a step must not inherit ignored, as a shell would start it.
DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ)


def _failure(exc: OSError | ValueError) -> tuple[int, str]:
    """(errno, reason) of a step that could not start."""
    if isinstance(exc, OSError):
        return exc.errno or 0, exc.strerror or str(exc)
    return 0, str(exc)  # a NUL in the command or environment, "=" in a name


def _step(request: dict[str, Any], parent: int, out: int, err: int, report: int) -> None:
    """In the step's child: never returns."""
    try:
        os.setsid()
        for number in DEFAULT_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        die_with_parent(parent)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.chdir(request["cwd"])
        os.execvpe(request["argv"][0], request["argv"], request["env"])
    except (OSError, ValueError) as exc:
        os.write(report, json.dumps(_failure(exc)).encode())
    finally:
        os._exit(127)


def start_step(request: dict[str, Any], fds: list[int], contained: bool) -> dict[str, Any]:
    """Start one step; its pid, or why it could not start.

    In a sandbox the step is spawned (vfork and exec): the spawner sleeps only until
    the exec and the child never runs Python, where a fork waits for the child to be
    scheduled, which a busy machine delays by milliseconds. It need not die with the
    spawner itself: the job's PID namespace ends, and every step in it, when its init
    does (agent/namespaces.py). Without a sandbox there is no such init, so the step is
    forked to set its parent-death signal before the exec."""
    argv, cwd = request["argv"], request["cwd"]
    if not argv or not Path(cwd).is_absolute():  # the agent sends neither; nor may anyone
        for fd in fds:
            os.close(fd)
        return {"error": "no command, or a relative working directory", "errno": errno.EINVAL}
    if not contained:
        return _fork_step(request, fds)
    out, err = fds
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.chdir(cwd)
        env = request["env"]
        pid = os.posix_spawn(
            _program(argv[0], env.get("PATH", os.defpath)),
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ],
            setsid=True,
            setsigdef=DEFAULT_SIGNALS,
        )
    except (OSError, ValueError) as exc:
        number, reason = _failure(exc)
        return {"error": reason, "errno": number}
    finally:
        for fd in (null, *fds):
            os.close(fd)
    return {"pid": pid}


def _program(name: str, path: str) -> str:
    """`name` found on the step's own PATH, as `execvp` would (posix_spawnp would
    search the spawner's)."""
    if "/" in name:
        return name
    for folder in path.split(os.pathsep):
        found = Path(folder or ".", name)
        if found.is_file() and os.access(found, os.X_OK):  # as execvp skips the rest
            return str(found)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _fork_step(request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    out, err = fds
    report_r, report_w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        _step(request, parent, out, err, report_w)
    os.close(report_w)
    for fd in fds:
        os.close(fd)
    with os.fdopen(report_r, "rb") as failed:
        said = failed.read()  # empty: the exec closed the pipe
    if not said:
        return {"pid": pid}
    os.waitpid(pid, 0)
    errno_, reason = json.loads(said)
    return {"error": reason, "errno": errno_}


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def serve_job(sock: socket.socket, setup: Callable[[], None], contained: bool) -> None:
    """A job spawner: `setup` (enter the sandbox, when `contained`), then start steps
    until the agent hangs up, which it may do before the spawner is ready (a job that
    failed at once) or while it answers."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        _serve_job(sock, setup, contained)


def _serve_job(sock: socket.socket, setup: Callable[[], None], contained: bool) -> None:
    try:
        setup()
        undumpable()
    except OSError as exc:
        reply(sock, {"error": str(exc)})
        return
    woken_r, woken_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(woken_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
    reply(sock, {"ready": os.getpid()})
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(woken_r, selectors.EVENT_READ)
    reader = Reader(sock)
    while True:
        for key, _ in selector.select():
            if key.fd == woken_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(woken_r, 512):
                        pass
                _reap(sock)
                continue
            request = reader.next()
            if request is None:
                return
            while request is not None:
                reply(sock, start_step(*request, contained))
                request = reader.buffered()


# --- the fork server ----------------------------------------------------------------


def serve(sock: socket.socket) -> None:
    """Fork a job spawner for every job the agent sends, until it hangs up. A message
    without a job's socket asks for a standby: a child that has made the first half of
    the sandbox (`prepare`) and waits for a job, so the next one needs only the second."""
    signal.signal(signal.SIGCHLD, reap_all)
    server = _Server(sock)
    reader = Reader(sock)
    while (request := reader.next()) is not None:
        try:
            server.handle(*request)
        except Exception:  # that job fails (its socket closes); the others run on
            traceback.print_exc()


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.standby: _Standby | None = None

    def handle(self, message: dict[str, Any], fds: list[int]) -> None:
        plan = message.get("sandbox")
        if fds:
            job = socket.socket(fileno=fds[0])
            try:
                self._start(job, plan)
            finally:
                job.close()
                for fd in fds[1:]:
                    os.close(fd)
        elif plan is not None:  # the next job's
            if self.standby is not None:
                self.standby.drop()
                self.standby = None
            self.standby = _Standby(plan, [self.sock])

    def _start(self, job: socket.socket, plan: dict[str, Any] | None) -> None:
        standby = self.standby
        if plan is not None and standby is not None and standby.fits(plan):
            self.standby = None
            if standby.take(job, plan["workspace"]):
                return
        ours = [self.sock, *([self.standby.sock] if self.standby else [])]  # not for the child
        setup = functools.partial(_enter, plan)
        _fork(ours, functools.partial(serve_job, job, setup, plan is not None))


def _enter(plan: dict[str, Any] | None) -> None:
    if plan is not None:
        enter(plan)


def _fork(close: list[socket.socket], child: Callable[[], None]) -> int:
    """Run `child` in a forked process (without `close`) that dies with this one."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            for sock in close:
                sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            die_with_parent(parent)
            child()
        except BaseException:
            traceback.print_exc()  # on the agent's stderr: this process ends here
            os._exit(1)
        finally:
            os._exit(0)
    return pid


class _Standby:
    """A child that has made the first half of a sandbox and waits for its job."""

    def __init__(self, plan: dict[str, Any], close: list[socket.socket]) -> None:
        self.plan = plan
        self.hidden = covers(plan)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.pid = _fork([*close, self.sock], lambda: self._wait(theirs))
        theirs.close()

    def fits(self, plan: dict[str, Any]) -> bool:
        same = ("agent", "work", "cache", "uid", "gid")
        return all(plan[k] == self.plan[k] for k in same) and covers(plan) == self.hidden

    def take(self, job: socket.socket, workspace: str) -> bool:
        """Hand it the job; False when it could not be (it died: a fresh one is forked)."""
        try:
            socket.send_fds(self.sock, [frame({"workspace": workspace}, 1)], [job.fileno()])
        except OSError:
            self.drop()
            return False
        self.sock.close()
        return True

    def drop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.sock.close()

    def _wait(self, sock: socket.socket) -> None:
        failed: OSError | None = None
        proc = -1
        try:
            proc = prepare(self.plan, self.hidden)
        except OSError as exc:  # said to the job that comes
            failed = exc
        request = Reader(sock).next()
        if request is None:
            return
        message, (job_fd,) = request
        sock.close()

        def setup() -> None:
            if failed is not None:
                raise failed
            finish(self.plan, message["workspace"], proc)

        serve_job(socket.socket(fileno=job_fd), setup, True)


def main(argv: list[str]) -> None:
    """`<socket fd> <agent pid>`: the fork server (agent/launcher.py starts it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the agent's
    die_with_parent(int(argv[1]))
    os.set_inheritable(int(argv[0]), False)
    serve(socket.socket(fileno=int(argv[0])))
