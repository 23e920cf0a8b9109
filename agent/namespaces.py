"""Building a job's sandbox (agent/sandbox.py says what it hides): user and mount
namespaces made with raw system calls, in two halves so that the first can be made
before the job is known (agent/spawner.py keeps one ready). Standard library only: the
spawner runs without the agent's packages."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
from pathlib import Path
from stat import S_ISDIR
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (the generic table)
_libc = ctypes.CDLL(None, use_errno=True)
# What in /proc sets the machine's kernel: read-only to steps, which are root (in their
# user namespace, with the host's uid) where the agent runs as root
KERNEL_SETTINGS = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")


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


def _read_only(path: str, on: bool, recursive: bool, at: int = AT_FDCWD) -> None:
    """Set (or clear) read-only on the mount at `path` (and every mount below it); with
    `at` a descriptor and `path` empty, on the mount that descriptor is on."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY if on else 0, 0 if on else MOUNT_ATTR_RDONLY, 0, 0)
    flags = (AT_RECURSIVE if recursive else 0) | (0 if path else AT_EMPTY_PATH)
    result = _libc.syscall(
        SYS_MOUNT_SETATTR, at, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(result, f"mount_setattr {path}")


def _enter_userns(
    inner_uid: int, outer_uid: int, inner_gid: int, outer_gid: int, proc: int | None = None
) -> None:
    """`proc`: the host's /proc (a descriptor), where /proc is the job's own, which
    does not show this process."""
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{inner_uid} {outer_uid} 1"),
        ("gid_map", f"{inner_gid} {outer_gid} 1"),
    ):
        path = f"self/{name}" if proc is not None else f"/proc/self/{name}"
        fd = os.open(path, os.O_WRONLY, dir_fd=proc)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _show_only(directory: str, shown: list[str], proc: int | None = None) -> None:
    """Cover `directory` with an empty tmpfs that holds only `shown` (paths below it).
    `proc`: as for `_enter_userns`."""
    keep = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in shown]
    if proc is not None:  # the binds' sources are named from there: `self/fd/<n>`
        os.fchdir(proc)
    _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    for path, fd in keep:
        Path(path).mkdir(parents=True, exist_ok=True)
        source = f"/proc/self/fd/{fd}" if proc is None else f"self/fd/{fd}"
        _mount(source, path, None, MS_BIND | MS_REC)
        os.close(fd)


def _below(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


Covered = tuple[tuple[str, bool, int, int], ...]


def covers(plan: dict[str, Any]) -> Covered:
    """The hidden paths that exist now, each with whether it is a directory and its
    (st_dev, st_ino): what a sandbox built now covers. A standby built for others is
    not used — nor one whose path was since replaced by a rename, which takes the mount
    on the old file away in every namespace."""
    found = []
    for path in plan["hidden"]:
        try:
            stat = Path(path).stat()
        except OSError:
            continue
        found.append((path, S_ISDIR(stat.st_mode), stat.st_dev, stat.st_ino))
    return tuple(found)


def prepare(plan: dict[str, Any], hidden: Covered) -> int:
    """The first half of a sandbox, the same for every job of the agent (`work`,
    `cache`: its directories; `hidden`: what `covers` found), with the job's PID
    namespace, its init and its /proc; returns the host's /proc, which that covers (a
    descriptor, for `finish`)."""
    _enter_userns(0, plan["uid"], 0, plan["gid"])
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # /tmp its own mount (with what is mounted below it), so it can stay writable
    _mount("/tmp", "/tmp", None, MS_BIND | MS_REC)
    # the agent's directory shows only work/ and cache/: its credentials are hidden
    # with it, and a file renamed over them later has nothing to uncover
    agent, shown = plan["agent"], [plan["work"], plan["cache"]]
    _show_only(agent, [path for path in shown if _below(path, agent)])
    for path, is_dir, _dev, _ino in hidden:
        if _below(path, agent) and not any(_below(path, each) for each in shown):
            continue  # gone with the rest of the agent's directory
        if is_dir:
            _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
        else:
            _mount("/dev/null", path, None, MS_BIND)
    _mount(plan["cache"], plan["cache"], None, MS_BIND | MS_REC)
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    _own_pids()
    return proc


def finish(plan: dict[str, Any], own: str, proc: int) -> None:
    """The second half, for the job whose workspace is `own`; then the mounts are
    locked and this process is the agent's user again, without capabilities outside.
    `proc`: what `prepare` returned."""
    _show_only(plan["work"], [own], proc)
    _read_only("/", on=True, recursive=True)  # nothing else may be changed
    for writable in (own, "/tmp", "/proc"):
        _read_only(writable, on=False, recursive=False)
    _read_only("", on=False, recursive=False, at=proc)  # the host's, for the uid map below
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m")
    # locks the mounts; back to our own uid
    _enter_userns(plan["uid"], 0, plan["gid"], 0, proc)
    os.close(proc)
    os.chdir(own)  # through the mounts now, so `..` cannot walk under them


def _own_pids() -> None:
    """Steps forked from now on are in a PID namespace of their own, whose init (a child
    of this process) dies with it; the kernel then kills every process left in it, so
    what a step started with `setsid` or a double fork ends with the job. This process
    stays outside: `fork` gives it the host's pids, which the agent signals and tracks.
    Made before the job is known (by a standby): the init mounts the namespace's /proc
    where it is, and the second half of the sandbox (`finish`) copies it. The init
    keeps no descriptor of this process's (a standby's socket held open would take a
    job after the standby died)."""
    _check(_libc.unshare(CLONE_NEWPID), "unshare pid")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.closerange(3, ready_w)
        os.closerange(ready_w + 1, os.sysconf("SC_OPEN_MAX"))
        _init(ready_w)
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        failed = ready.read()  # empty: it runs
    if failed:
        os.waitpid(pid, 0)
        raise OSError(0, f"the job's init: {failed.decode()}")


def _init(ready: int) -> None:
    """Pid 1 of a job's PID namespace: reaps what is orphaned there until it dies with
    its spawner. Never returns."""
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        parent_gone = select.poll()
        parent_gone.register(ready, 0)  # the read end closed: the spawner died already
        if parent_gone.poll(0):
            os._exit(1)
        # a /proc of this namespace, so a step's own pids ($$, $!) name its processes;
        # where it is refused (a container masking parts of /proc) the host's stays
        with contextlib.suppress(OSError):
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        for path in KERNEL_SETTINGS:  # mounts of their own: `finish` leaves them read-only
            with contextlib.suppress(OSError):  # not there (as the host's /proc may lack)
                _mount(path, path, None, MS_BIND | MS_REC)
        undumpable()  # as its spawner: it keeps capabilities in the job's namespaces
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        os.close(ready)
    except BaseException as exc:
        os.write(ready, str(exc).encode() or b"failed")
        os._exit(1)
    while True:
        signal.sigwait({signal.SIGCHLD})
        reap_all()


def enter(plan: dict[str, Any]) -> None:
    """Move this process into a new sandbox for the workspace `plan["workspace"]`."""
    finish(plan, plan["workspace"], prepare(plan, covers(plan)))


def reap_all(*_: object) -> None:
    """Reap every child that has ended (also a SIGCHLD handler)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def undumpable() -> None:
    """Processes of the same user in the same namespaces cannot trace this one nor read
    its memory (they lack the capability the kernel then asks for)."""
    _libc.prctl(PR_SET_DUMPABLE, 0)


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when `parent` (its thread) dies; exit if it has already."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() not in (parent, 0):  # 0: a step, its spawner outside its PID namespace
        os._exit(1)
