"""Keeping hold of each step's processes (agent/reaper.py says how they end).

`Containment` is made once per agent: it clears what a killed predecessor left, moves
the agent into a cgroup of its own (where it may) so every step is born inside it, and
runs the watchdog. `StepGuard` is one step's: the `Tracker` its process runs with, it
notes the step's process group in the ledger and with the watchdog, and kills the step
at once when the agent learns that the attempt is no longer its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent import reaper
from agent.journal import Ledger, StartedStep

log = logging.getLogger("runyard.agent")


class Containment:
    def __init__(self, agent_id: str, ledger: Ledger) -> None:
        self.ledger = ledger
        self.home = reaper.own_cgroup()  # where the agent was started
        self.base = reaper.cgroup_base(self.home, f"runyard-agent-{agent_id}")
        self.cgroup: Path | None = None  # the agent's own, once it moved there
        self.watchdog = reaper.Watchdog()

    def start(self, leftovers: list[StartedStep]) -> None:
        """Kill what an earlier process of this agent left running — the steps its
        ledger names (by process group and start time) and everything in its cgroups —
        then start the watchdog and move into a fresh cgroup."""
        for step in leftovers:
            if step.pgid is not None:
                reaper.kill_group(step.pgid, step.ticks)
        cgroup: Path | None = None
        if self.base is not None:
            for old in [p for p in self.base.iterdir() if p.is_dir()]:
                reaper.kill_cgroup(old)
                reaper.remove_cgroup(old)
            cgroup = self.base / str(os.getpid())
            try:
                cgroup.mkdir(exist_ok=True)
            except OSError:
                cgroup = None
        if not self.watchdog.start(cgroup):
            log.warning("no watchdog: steps would outlive this agent if it were killed")
        if cgroup is not None and reaper.join_cgroup(cgroup):
            self.cgroup = cgroup
        else:
            log.info("no cgroup for this agent: a step's processes are followed by group")

    def stop(self) -> None:
        """A clean exit: leave the cgroup (nothing of ours should be left in it)."""
        self.watchdog.stop()
        if self.cgroup is None or self.home is None:
            return
        if reaper.join_cgroup(self.home):
            reaper.kill_cgroup(self.cgroup)
            if reaper.remove_cgroup(self.cgroup) and self.base is not None:
                reaper.remove_cgroup(self.base)  # unless another process of it runs

    def guard(self, job: str) -> StepGuard:
        return StepGuard(self, job)


class StepGuard:
    """One step's processes (a `process.Tracker`); `key` is set by the agent once the
    ledger has the step."""

    def __init__(self, containment: Containment, job: str) -> None:
        self.containment = containment
        self.job = job
        self.key = ""
        self.pgid: int | None = None

    def started(self, pid: int) -> None:
        self.pgid = pid
        self.containment.ledger.process(self.job, self.key, pid, reaper.start_ticks(pid))
        self.containment.watchdog.track(pid)

    def kill_now(self) -> None:
        """Every process of the step's group, without the grace a cancel gets."""
        if self.pgid is not None:
            reaper.kill_group(self.pgid)

    def close(self) -> None:
        """After the step: nothing of it is left to follow."""
        if self.pgid is not None:
            self.containment.watchdog.untrack(self.pgid)
