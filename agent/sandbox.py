"""What a step's processes can see of the agent's machine (Linux user namespaces).

A step runs as the agent's user, so without help it could read the agent's token
(`agent.json`), forge messages into its spool, rewrite cached actions other projects
run, plant a `~/.gitconfig` the agent's own git then obeys, read other jobs'
workspaces, or — on the machine `runyard up` runs on — the server's keys and
passwords. Before a step's program starts, its process enters a new user and mount
namespace where:

- the whole file system is read-only, except this job's workspace, `/tmp` and an
  empty `/dev/shm` of the step's own; steps get `HOME=<workspace>/.runyard/home`;
- every hidden path (the agent's credentials, spool and state, well-known credential
  files in the user's home such as `~/.ssh` and `~/.netrc`, and the paths given with
  `--hide`) is covered by an empty read-only tmpfs (a file by /dev/null);
- `work/` shows only this job's own workspace; the action cache is read-only;
- it then enters a second, nested pair of namespaces, which locks those mounts (a
  less privileged namespace cannot unmount them to look underneath) and maps the
  agent's own uid back, so the program runs as the same user with no capabilities;
- other processes' `/proc/<pid>/environ`, `mem` and `root` are out of reach, since
  they are in a more privileged user namespace (ptrace access is refused).

Not covered: steps share the agent's process ids, so a step can signal other processes
of the same user (run agents as a user of their own, apart from the server's).
Where user namespaces are not allowed (some hardened kernels), `probe()` says why and
steps run without this isolation; `runyard agent start` logs that once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
HOLDERS = 64  # workspaces whose namespaces are kept ready (more than an agent's slots)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (the generic table)
# Credentials that commonly sit in a user's home; steps must not read them.
HOME_SECRETS = (
    ".ssh", ".netrc", ".git-credentials", ".config/git/credentials", ".config/runyard",
    ".docker", ".aws", ".azure", ".config/gcloud", ".kube", ".gnupg", ".pypirc", ".npmrc",
    ".config/gh", ".password-store",
)  # fmt: skip

_libc = ctypes.CDLL(None, use_errno=True)


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


@dataclass
class _Holder:
    """A sleeping process inside one workspace's namespaces, which keeps them alive
    for the job's steps to join, and the namespaces' file descriptors."""

    process: subprocess.Popen[bytes]
    user: int
    mnt: int
    ino: int

    @classmethod
    def start(cls, enter: Callable[[], None], cwd: Path, ino: int) -> _Holder:
        def setup() -> None:
            enter()
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlives the agent

        process = subprocess.Popen(
            ["sleep", "infinity"],
            cwd=cwd,
            preexec_fn=setup,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )
        try:
            user = os.open(f"/proc/{process.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            mnt = os.open(f"/proc/{process.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            process.kill()
            process.wait()
            raise
        return cls(process, user, mnt, ino)

    def close(self) -> None:
        for fd in (self.user, self.mnt):
            os.close(fd)
        self.process.kill()
        self.process.wait()


class Sandbox:
    """Made once per agent; `preexec(workspace)` runs in each step's child process;
    `close()` ends the namespaces it keeps."""

    def __init__(self, agent_dir: Path, hidden: Sequence[Path] = ()) -> None:
        self.work = agent_dir / "work"
        self.cache = agent_dir / "cache"
        for path in (self.work, self.cache):
            path.mkdir(parents=True, exist_ok=True)
        own = [agent_dir / "agent.json", agent_dir / "spool", agent_dir / "state"]
        home = [Path.home() / p for p in HOME_SECRETS]
        self.hidden = [p.resolve() for p in [*own, *home, *hidden]]
        self.enabled = True
        self.holders: dict[str, _Holder] = {}  # by workspace, oldest first

    def probe(self) -> str | None:
        """None when steps can be isolated here, else the reason they cannot."""
        workspace = self.work / ".probe"
        workspace.mkdir(exist_ok=True)
        try:
            subprocess.run(
                ["/bin/true"], check=True, preexec_fn=self.preexec(workspace), close_fds=True
            )
        except (subprocess.SubprocessError, OSError) as exc:
            self.enabled = False
            return str(exc)
        finally:
            self.close()
        return None

    def env(self, workspace: Path) -> dict[str, str]:
        """Where a step writes what it would write to its home and temp directories."""
        if not self.enabled:
            return {}
        home = workspace / ".runyard" / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {"HOME": str(home)}

    def preexec(self, workspace: Path) -> Callable[[], None] | None:
        """What a step's child runs before its program: join the namespaces prepared
        for this workspace (made by a holder process on the job's first step; building
        them costs several milliseconds, joining them a few microseconds)."""
        if not self.enabled:
            return None
        holder = self._holder(workspace)
        user, mnt = holder.user, holder.mnt

        def join() -> None:
            cwd = Path.cwd()
            _check(_libc.setns(user, CLONE_NEWUSER), "setns user")
            _check(_libc.setns(mnt, CLONE_NEWNS), "setns mount")
            os.chdir(cwd)  # joining a mount namespace moved it to its root

        return join

    def _holder(self, workspace: Path) -> _Holder:
        ino = workspace.stat().st_ino  # a new attempt's workspace is a new directory
        found = self.holders.pop(str(workspace), None)
        if found is not None and found.ino == ino and found.process.poll() is None:
            self.holders[str(workspace)] = found
            return found
        if found is not None:
            found.close()
        holder = _Holder.start(self._enter(workspace), workspace, ino)
        self.holders[str(workspace)] = holder
        while len(self.holders) > HOLDERS:  # the oldest job's is long finished
            self.holders.pop(next(iter(self.holders))).close()
        return holder

    def release(self, workspace: Path) -> None:
        """The job of `workspace` ended: its namespaces are not needed any more."""
        if (found := self.holders.pop(str(workspace), None)) is not None:
            found.close()

    def close(self) -> None:
        while self.holders:
            self.holders.popitem()[1].close()

    def _enter(self, workspace: Path) -> Callable[[], None]:
        own = workspace.resolve()
        work, cache = str(self.work.resolve()), str(self.cache.resolve())
        if not str(own).startswith(work + "/"):
            raise ValueError(f"a step's workspace must be inside {work}: {own}")
        hidden = [str(p) for p in self.hidden if p.exists()]

        def enter() -> None:
            uid, gid = os.getuid(), os.getgid()
            cwd = Path.cwd()  # set before this runs: it still points below the covers
            _enter_userns(0, uid, 0, gid)
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            # /tmp its own mount (with what is mounted below it), so it can stay writable
            _mount("/tmp", "/tmp", None, MS_BIND | MS_REC)
            for path in hidden:
                if Path(path).is_dir():
                    _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
                else:
                    _mount("/dev/null", path, None, MS_BIND)
            _only_own_workspace(work, str(own))
            _mount(cache, cache, None, MS_BIND | MS_REC)
            _read_only("/", on=True, recursive=True)  # nothing else may be changed
            for writable in (str(own), "/tmp", "/proc"):  # /proc: for the uid map below
                _read_only(writable, on=False, recursive=False)
            _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m")
            _enter_userns(uid, 0, gid, 0)  # locks the mounts above; back to our own uid
            os.chdir(cwd)  # through the mounts now, so `..` cannot walk under them

        return enter


def _only_own_workspace(work: str, own: str) -> None:
    """Cover `work/` with an empty tmpfs that holds only this job's workspace."""
    keep = os.open(own, os.O_PATH | os.O_DIRECTORY)
    _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    Path(own).mkdir(parents=True, exist_ok=True)
    _mount(f"/proc/self/fd/{keep}", own, None, MS_BIND | MS_REC)
    os.close(keep)
