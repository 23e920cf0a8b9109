"""Starts steps' processes from inside their job's sandbox, so that the agent itself
forks nothing per step (agent/sandbox.py says what the sandbox is, agent/launcher.py
is the agent's side).

Three generations, each killed (SIGKILL, `PR_SET_PDEATHSIG`) when its parent dies:

1. the **fork server**, `python -I -S spawner.py <socket fd> <agent pid>` (this file,
   standard library only, ~11 MB), started once with the agent;
2. a **job spawner** per job, forked by the fork server when the agent sends it a plan
   and one end of a socket pair: it builds the job's user and mount namespaces (when
   the plan has a sandbox), makes itself undumpable (steps can neither trace it nor
   read its memory) and serves that socket until the agent closes it;
3. a **step**: forked by the job spawner, in a session of its own, its output on the
   pipes the agent passed, exec'd with the environment the agent sent.

Forking an 11 MB process costs a fraction of forking the agent, and the agent's own
spawns need no `preexec_fn` any more.

Wire (job socket, a stream): agent → spawner `<4-byte length><JSON>` with the step's
stdout and stderr attached (SCM_RIGHTS); spawner → agent one JSON object a line:
`{"ready": pid}` or `{"error": ...}` once, then per step `{"pid": n}` or
`{"error": ..., "errno": n}`, and `{"exit": pid, "code": n}` when it ends (`code` as
asyncio gives it: negative for a signal). The fork server's socket takes the plans in
the same framing, the job's socket attached.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (the generic table)
HEADER = struct.Struct(">I")
MAX_FDS = 4

_libc = ctypes.CDLL(None, use_errno=True)


# --- namespaces ---------------------------------------------------------------------


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _read_only(path: str, on: bool, recursive: bool) -> None:
    """Set (or clear) read-only on the mount at `path` (and every mount below it)."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY if on else 0, 0 if on else MOUNT_ATTR_RDONLY, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    result = _libc.syscall(
        SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(result, f"mount_setattr {path}")


def _enter_userns(inner_uid: int, outer_uid: int, inner_gid: int, outer_gid: int) -> None:
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{inner_uid} {outer_uid} 1")
    Path("/proc/self/gid_map").write_text(f"{inner_gid} {outer_gid} 1")


def _only_own_workspace(work: str, own: str) -> None:
    """Cover `work/` with an empty tmpfs that holds only this job's workspace."""
    keep = os.open(own, os.O_PATH | os.O_DIRECTORY)
    _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    Path(own).mkdir(parents=True, exist_ok=True)
    _mount(f"/proc/self/fd/{keep}", own, None, MS_BIND | MS_REC)
    os.close(keep)


def enter(plan: dict[str, Any]) -> None:
    """Move this process into a new sandbox for the workspace `plan["workspace"]`
    (`work`, `cache`: the agent's directories; `hidden`: paths to cover)."""
    own, work, cache = plan["workspace"], plan["work"], plan["cache"]
    hidden = [p for p in plan["hidden"] if Path(p).exists()]
    uid, gid = os.getuid(), os.getgid()
    _enter_userns(0, uid, 0, gid)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # /tmp its own mount (with what is mounted below it), so it can stay writable
    _mount("/tmp", "/tmp", None, MS_BIND | MS_REC)
    for path in hidden:
        if Path(path).is_dir():
            _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
        else:
            _mount("/dev/null", path, None, MS_BIND)
    _only_own_workspace(work, own)
    _mount(cache, cache, None, MS_BIND | MS_REC)
    _read_only("/", on=True, recursive=True)  # nothing else may be changed
    for writable in (own, "/tmp", "/proc"):  # /proc: for the uid map below
        _read_only(writable, on=False, recursive=False)
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m")
    _enter_userns(uid, 0, gid, 0)  # locks the mounts above; back to our own uid
    os.chdir(own)  # through the mounts now, so `..` cannot walk under them


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when `parent` (its thread) dies; exit if it has already."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


# --- the wire -----------------------------------------------------------------------


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One framed request and the descriptors sent with it (None: the socket closed)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 65536, MAX_FDS)
    for fd in fds:
        os.set_inheritable(fd, False)
    if len(data) < HEADER.size:
        for fd in fds:
            os.close(fd)
        return None
    (size,) = HEADER.unpack_from(data)
    body = bytearray(data[HEADER.size :])
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            return None
        body += chunk
    return json.loads(body), fds


def reply(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


# --- a job spawner ------------------------------------------------------------------


def _step(request: dict[str, Any], parent: int, out: int, err: int, report: int) -> None:
    """In the step's child: never returns."""
    try:
        os.setsid()
        die_with_parent(parent)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.chdir(request["cwd"])
        os.execvpe(request["argv"][0], request["argv"], request["env"])
    except OSError as exc:
        os.write(report, json.dumps([exc.errno or 0, exc.strerror or str(exc)]).encode())
    finally:
        os._exit(127)


def start_step(request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """Fork and exec one step; its pid, or why it could not start."""
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
    errno, reason = json.loads(said)
    return {"error": reason, "errno": errno}


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def serve_job(sock: socket.socket, plan: dict[str, Any] | None) -> None:
    """A job spawner: enter the sandbox, then start steps until the agent hangs up."""
    try:
        if plan is not None:
            enter(plan)
        _libc.prctl(PR_SET_DUMPABLE, 0)
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
    while True:
        for key, _ in selector.select():
            if key.fd == woken_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(woken_r, 512):
                        pass
                _reap(sock)
                continue
            request = receive(sock)
            if request is None:
                return
            reply(sock, start_step(*request))


# --- the fork server ----------------------------------------------------------------


def serve(sock: socket.socket) -> None:
    """Fork a job spawner for every plan the agent sends, until it hangs up."""
    signal.signal(signal.SIGCHLD, _reap_quietly)
    while (request := receive(sock)) is not None:
        plan, (job_fd,) = request
        parent = os.getpid()
        if os.fork() == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            die_with_parent(parent)
            job = socket.socket(fileno=job_fd)
            try:
                serve_job(job, plan.get("sandbox"))
            finally:
                os._exit(0)
        os.close(job_fd)


def _reap_quietly(*_: object) -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the agent's
    die_with_parent(int(sys.argv[2]))
    os.set_inheritable(int(sys.argv[1]), False)
    serve(socket.socket(fileno=int(sys.argv[1])))
