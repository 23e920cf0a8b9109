"""What a step's processes can see of the agent's machine (Linux user namespaces).

A step runs as the agent's user, so without help it could read the agent's token
(`agent.json`), forge messages into its spool, rewrite cached actions other projects
run, read other jobs' workspaces, or — on the machine `runyard up` runs on — the
server's keys and passwords. Before a step's program starts, its process enters a new
user and mount namespace where:

- every hidden path (the agent's credentials, spool and state, and the paths given
  with `--hide`) is covered by an empty read-only tmpfs (a file by /dev/null);
- `work/` shows only this job's own workspace; the action cache is read-only;
- it then enters a second, nested pair of namespaces, which locks those mounts (a
  less privileged namespace cannot unmount them to look underneath) and maps the
  agent's own uid back, so the program runs as the same user with no capabilities;
- other processes' `/proc/<pid>/environ`, `mem` and `root` are out of reach, since
  they are in a more privileged user namespace (ptrace access is refused).

Where user namespaces are not allowed (some hardened kernels), `probe()` says why and
steps run without this isolation; `runyard agent start` logs that once.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Callable, Sequence
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


def _enter_userns(inner_uid: int, outer_uid: int, inner_gid: int, outer_gid: int) -> None:
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{inner_uid} {outer_uid} 1")
    Path("/proc/self/gid_map").write_text(f"{inner_gid} {outer_gid} 1")


class Sandbox:
    """Made once per agent; `preexec(workspace)` runs in each step's child process."""

    def __init__(self, agent_dir: Path, hidden: Sequence[Path] = ()) -> None:
        self.work = agent_dir / "work"
        self.cache = agent_dir / "cache"
        own = [agent_dir / "agent.json", agent_dir / "spool", agent_dir / "state"]
        self.hidden = [p.resolve() for p in [*own, *hidden]]
        self.enabled = True

    def probe(self) -> str | None:
        """None when steps can be isolated here, else the reason they cannot."""
        try:
            subprocess.run(
                ["/bin/true"], check=True, preexec_fn=self.preexec(self.work), close_fds=True
            )
        except (subprocess.SubprocessError, OSError) as exc:
            self.enabled = False
            return str(exc)
        return None

    def preexec(self, workspace: Path) -> Callable[[], None] | None:
        if not self.enabled:
            return None
        hidden = [str(p) for p in self.hidden if p.exists() and p != self.work]
        work, cache = str(self.work), str(self.cache)
        own = str(workspace.resolve())

        def enter() -> None:
            uid, gid = os.getuid(), os.getgid()
            cwd = Path.cwd()  # set before this runs: it still points below the covers
            _enter_userns(0, uid, 0, gid)
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            for path in hidden:
                if Path(path).is_dir():
                    _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
                else:
                    _mount("/dev/null", path, None, MS_BIND)
            if Path(work).is_dir():
                _only_own_workspace(work, own)
            if Path(cache).is_dir():
                _mount(cache, cache, None, MS_BIND | MS_REC)
                _mount(None, cache, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
            _enter_userns(uid, 0, gid, 0)  # locks the mounts above; back to our own uid
            os.chdir(cwd)  # through the mounts now, so `..` cannot walk under them

        return enter


def _only_own_workspace(work: str, own: str) -> None:
    """Cover `work/` with an empty tmpfs that holds only this job's workspace."""
    keep = os.open(own, os.O_PATH | os.O_DIRECTORY) if own.startswith(work + "/") else -1
    _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    if keep >= 0:
        Path(own).mkdir(parents=True, exist_ok=True)
        _mount(f"/proc/self/fd/{keep}", own, None, MS_BIND | MS_REC)
        os.close(keep)
    _mount(None, work, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
