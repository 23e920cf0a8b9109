"""A step's processes die with its agent: the watchdog, process groups by start time,
cgroups (where this machine lets the agent make them)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent import reaper
from agent.connection import backoff
from agent.workspaces import MIN_AGE, sweep
from tests.processes import alive, wait_dead


def _group(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, start_new_session=True)


def test_the_watchdog_kills_what_it_was_told_about_when_the_agent_is_gone() -> None:
    kept, gone, untracked = _group("sleep", "61"), _group("sleep", "62"), _group("sleep", "63")
    try:
        dog = reaper.Watchdog()
        assert dog.start()
        dog.track(kept.pid)
        dog.track(gone.pid)
        dog.untrack(kept.pid)
        assert dog.proc is not None and dog.proc.stdin is not None
        dog.proc.stdin.close()  # what the kernel does when the agent dies
        dog.proc.wait(5)
        assert wait_dead([gone.pid], 5) == []
        assert alive(kept.pid) and alive(untracked.pid)
    finally:
        for proc in (kept, gone, untracked):
            proc.kill()
            proc.wait()


def test_a_clean_stop_of_the_watchdog_kills_nothing() -> None:
    step = _group("sleep", "64")
    try:
        dog = reaper.Watchdog()
        assert dog.start()
        dog.track(step.pid)
        dog.stop()
        assert alive(step.pid)
    finally:
        step.kill()
        step.wait()


def test_a_group_is_killed_only_while_its_leader_is_the_one_that_started() -> None:
    step = _group("sleep", "65")
    ticks = reaper.start_ticks(step.pid)
    assert ticks is not None
    reaper.kill_group(step.pid, ticks + 1)  # as if the pid now were another program's
    time.sleep(0.1)
    assert step.poll() is None
    reaper.kill_group(step.pid, ticks)
    assert step.wait(5) == -signal.SIGKILL


def test_the_agents_cgroup_holds_what_left_its_steps_groups(tmp_path: Path) -> None:
    base = reaper.cgroup_base(reaper.own_cgroup(), f"runyard-test-{os.getpid()}")
    if base is None:
        pytest.skip("this machine lets no process make cgroups")
    agent = base / "agent"
    agent.mkdir()
    step: subprocess.Popen[bytes] | None = None
    try:
        # a stand-in for the agent: moved into its cgroup, then it starts a "step"
        script = "setsid sleep 66 & echo $! > pid; exec sleep 67"
        step = subprocess.Popen(
            ["sh", "-c", script],
            cwd=tmp_path,
            start_new_session=True,
            preexec_fn=lambda: None if reaper.join_cgroup(agent) else os._exit(3),
        )
        # `$!` is written before the child has called setsid(): wait for both
        escaped = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = (tmp_path / "pid").read_text() if (tmp_path / "pid").exists() else ""
            escaped = int(text) if text.strip() else 0
            if escaped and os.getpgid(escaped) != step.pid:
                break
            time.sleep(0.02)
        assert escaped and os.getpgid(escaped) != step.pid  # out of the step's group
        # the agent dies: the watchdog kills the groups it knew and the whole cgroup
        assert reaper.watch([f"+{step.pid}\n".encode()], agent)
        assert wait_dead([escaped, step.pid], 5) == []
        step.wait(5)
        assert not agent.exists() and not base.exists()  # removed once empty
    finally:
        if step is not None and step.poll() is None:
            step.kill()
            step.wait(5)
        reaper.kill_cgroup(agent)
        reaper.remove_cgroup(agent)
        reaper.remove_cgroup(base)


def test_reconnects_back_off() -> None:
    assert [backoff(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_workspaces_of_jobs_that_are_over_are_removed_after_their_retention(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    for run, job in [("r1", "a"), ("r1", "b"), ("r2", "a"), ("r3", "old")]:
        (work / run / job).mkdir(parents=True)
    now = time.time()
    os.utime(work / "r3" / "old", (now - 7200, now - 7200))
    active = {("r1", "a")}
    assert sweep(work, active, keep=3600, now=now) == 1  # only the one kept for an hour
    assert sorted(p.name for p in work.iterdir()) == ["r1", "r2"]
    assert sweep(work, active, keep=0, now=now + MIN_AGE) == 2
    assert [p.relative_to(work).as_posix() for p in work.rglob("*")] == ["r1", "r1/a"]
