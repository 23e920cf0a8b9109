"""A step's processes die with its agent (DESIGN.md §10).

A step runs in its own session and process group, so a terminal's Ctrl-C or a
`kill -9` of the agent does not reach it by itself. Four things make sure it ends:

1. **Parent-death signal.** The step's main process gets `PR_SET_PDEATHSIG` = SIGKILL as
   the last thing before its program starts, so it dies with its job's spawner, which
   dies the same way with the agent's fork server, which dies with the agent's main
   thread (agent/spawner.py).
2. **The agent's cgroup** (cgroup v2, where the agent may make cgroups under its own —
   as root, or under systemd with `Delegate=yes`): at start the agent moves itself into
   a cgroup of its own, `<its cgroup>/runyard-agent-<id>/<pid>`, so every process it
   starts is born there and stays there even after `setsid` or a double fork. (One
   cgroup per step would need a migration per step, ~10 ms each on a loaded machine —
   more than a step's whole budget; being born in the cgroup costs nothing.)
3. **The watchdog**: a small process (`python -I -S reaper.py`, stdlib only, ~12 MB) in
   a session of its own, left outside that cgroup. The agent tells it over a pipe which
   process groups its running steps have; when the pipe closes without a goodbye — the
   agent died, however — it kills those groups and everything in the agent's cgroup
   (`cgroup.kill`), and exits.
4. **On restart**, the agent kills what its ledger (agent/journal.py) says was running
   and is still there, by process group *and start time*, so a pid the system has since
   given to another program is left alone, and everything left in its predecessors'
   cgroups; then it reports those steps `interrupted`.

Under systemd, `KillMode=control-group` (deploy/systemd/runyard-agent.service) ends
every process of the agent's unit when it stops or crashes, whatever else failed.

This module imports only the standard library: the watchdog runs it as a script.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


# --- processes ----------------------------------------------------------------------


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of proc(5); the two before ")" are cut off


def kill_group(pgid: int, ticks: int | None = None) -> None:
    """SIGKILL process group `pgid`. With `ticks`, only if its leader is gone or is still
    the process that started then (a pid in use as a group id is never reused, so a
    group whose leader died is still the step's)."""
    if ticks is not None:
        now = start_ticks(pgid)
        if now is not None and now != ticks:
            return  # the number belongs to another program now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --- cgroups ------------------------------------------------------------------------


def own_cgroup() -> Path | None:
    """This process's cgroup v2 directory, when the unified hierarchy is mounted."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
    if unified is None:
        return None
    for root in CGROUP_ROOTS:
        if (root / "cgroup.controllers").exists():
            found = root / unified.lstrip("/")
            if found.is_dir():
                return found
    return None


def cgroup_base(own: Path | None, name: str) -> Path | None:
    """`<own>/<name>`, made if need be, when this process may make cgroups there."""
    if own is None:
        return None
    base = own / name
    try:
        base.mkdir(exist_ok=True)
        probe = base / "probe"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError:
        return None
    return base


def kill_cgroup(path: Path) -> None:
    """SIGKILL every process in cgroup `path` (and its children)."""
    try:
        (path / "cgroup.kill").write_text("1")
        return
    except FileNotFoundError:
        if not path.exists():
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):  # kernels before 5.14: one by one
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)


def remove_cgroup(path: Path, wait: float = 1.0) -> bool:
    """Remove an emptied cgroup (killed processes take a moment to leave it)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def join_cgroup(path: Path) -> bool:
    """Move this process into `path` (the processes it starts afterwards are born there)."""
    try:
        (path / "cgroup.procs").write_text("0")
    except OSError:
        return False
    return True


# --- the watchdog -------------------------------------------------------------------


class Watchdog:
    """The agent's side: start the watchdog, tell it about steps' process groups."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, cgroup: Path | None = None) -> bool:
        """`cgroup`: the one the agent is about to move into, killed if it dies."""
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, *([str(cgroup)] if cgroup else [])],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # not in the agent's group: it must outlive it
                close_fds=True,
            )
        except OSError:
            return False
        return True

    def _send(self, line: str) -> None:
        if self.proc is None or self.proc.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def track(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def untrack(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def stop(self) -> None:
        """A clean exit: the watchdog kills nothing."""
        if self.proc is None:
            return
        self._send("bye")
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def watch(lines: Iterable[bytes], cgroup: Path | None = None) -> bool:
    """The watchdog: follow the agent's notes; when they end without `bye`, kill every
    process group still noted and everything in `cgroup`. True when it killed."""
    groups: set[int] = set()
    for raw in lines:
        line = raw.decode(errors="replace").strip()
        if line == "bye":
            return False
        with contextlib.suppress(ValueError):
            if line.startswith("+"):
                groups.add(int(line[1:]))
            elif line.startswith("-"):
                groups.discard(int(line[1:]))
    for pgid in groups:
        kill_group(pgid)
    if cgroup is not None:
        kill_cgroup(cgroup)
        if remove_cgroup(cgroup):
            remove_cgroup(cgroup.parent)  # the agent's folder, unless it runs again
    return True


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the agent's
    watch(sys.stdin.buffer, Path(sys.argv[1]) if len(sys.argv) > 1 else None)
