"""Every step runs at most once per attempt and the truth is told about each attempt
(DESIGN.md §10), with agents as real processes: killed mid-step and restarted,
stopped past the loss limit and resumed, restarted without their records, and cut off
from NATS. Each test performs the fault and fails if the bug is there."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from services.stack import Stack
from tests.processes import sleeping, wait_dead
from tests.system.harness import AgentProc, System, job_of
from tests.system.test_faults import nats_down

ONCE = """
name: Once
jobs:
  work:
    steps:
      - id: main
        run: |
          echo "start $RUNYARD_JOB_ATTEMPT" >> "{marker}"
          echo "attempt $RUNYARD_JOB_ATTEMPT begins"
          if [ "$RUNYARD_JOB_ATTEMPT" = 1 ]; then
            setsid sleep 318 < /dev/null > /dev/null 2>&1 &
            sleep 317
          fi
          echo "end $RUNYARD_JOB_ATTEMPT" >> "{marker}"
          echo "attempt $RUNYARD_JOB_ATTEMPT ends"
"""


def lines(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


async def until(system: System, check: Any, timeout: float, what: str) -> None:
    async def wrapped() -> bool:
        return bool(check())

    await system.wait_for(wrapped, timeout, what)


async def log_of(system: System, run_id: str, job: str, step: str, attempt: int) -> dict[str, Any]:
    """The stored log of one step in one attempt, once it is complete."""
    path = f"/api/runs/{run_id}/jobs/{job}/steps/{step}/logs"
    page: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        page = await system.call("GET", path, params={"attempt": attempt})
        if page["ended"]:
            break
        await asyncio.sleep(0.2)
    return page


async def workspaces_gone(system: System, agent: AgentProc) -> None:
    work = agent.dir / "work"

    def left() -> list[str]:
        return sorted(str(p.relative_to(work)) for p in work.rglob("*")) if work.exists() else []

    with contextlib.suppress(AssertionError):
        await until(system, lambda: not left(), 10, "workspaces removed")
    assert left() == [], "workspaces left behind"


async def test_an_agent_killed_mid_step_and_restarted_runs_the_step_once_per_attempt(
    system: System, tmp_path: Path
) -> None:
    await system.project("p")
    agent = await system.agent("a", projects=["p"])
    marker = tmp_path / "marker"
    await system.pipeline("p", ONCE.replace("{marker}", str(marker)))
    run_id = await system.start_run("p", "Once")
    await until(system, lambda: sleeping(317) and sleeping(318), 20, "attempt 1 under way")
    step_pids = sleeping(317) + sleeping(318)  # 318 left the step's process group
    await asyncio.sleep(0.5)  # its first log line is sent

    assert agent.proc is not None
    agent.proc.kill(signal.SIGKILL)
    assert wait_dead(step_pids, 5) == [], "a step process outlived its agent"

    await system.start_agent(agent)
    restarted = time.monotonic()
    run = await system.wait_run(run_id, timeout=30)
    assert run["status"] == "success", run
    assert time.monotonic() - restarted < 10  # retried at once, not after a minute

    job = job_of(run, "work")
    assert job["attempt"] == 2 and job["error"] is None  # the retry's error is its own
    (first,) = job["attempts"]
    assert first["status"] == "interrupted"
    assert first["steps"][0]["status"] == "interrupted"
    assert "stopped while this step ran" in first["error"]
    await asyncio.sleep(1)
    assert lines(marker) == ["start 1", "start 2", "end 2"]  # no re-run, no late effect

    one = await log_of(system, run_id, "work", "main", 1)
    two = await log_of(system, run_id, "work", "main", 2)
    assert [x["text"] for x in one["lines"]] == ["attempt 1 begins"] and one["ended"]
    assert [x["text"] for x in two["lines"]] == ["attempt 2 begins", "attempt 2 ends"]
    await workspaces_gone(system, agent)


PAIR = """
name: Pair
jobs:
  short:
    steps:
      - run: |
          echo "short start $RUNYARD_JOB_ATTEMPT" >> "{marker}"
          if [ "$RUNYARD_JOB_ATTEMPT" = 1 ]; then
            for _ in $(seq 600); do [ -e "{marker}.go" ] && break; sleep 0.1; done
          fi
          echo "short end $RUNYARD_JOB_ATTEMPT" >> "{marker}"
  long:
    steps:
      - run: |
          echo "long start $RUNYARD_JOB_ATTEMPT" >> "{marker}"
          if [ "$RUNYARD_JOB_ATTEMPT" = 1 ]; then sleep 319; fi
          echo "long end $RUNYARD_JOB_ATTEMPT" >> "{marker}"
"""


async def test_a_stopped_agent_that_resumes_is_fenced_off(system: System, tmp_path: Path) -> None:
    await system.project("p")
    victim = await system.agent("x", projects=["p"], slots=2)
    spare = await system.agent("y", projects=["p"], start=False)
    marker = tmp_path / "marker"
    await system.pipeline("p", PAIR.replace("{marker}", str(marker)))
    run_id = await system.start_run("p", "Pair")
    await until(system, lambda: len(lines(marker)) >= 2 and sleeping(319), 20, "both jobs")

    assert victim.proc is not None
    victim.proc.send(signal.SIGSTOP)  # past the 30 s loss limit
    try:
        # the short step ends while its agent is stopped (whatever the load), so its
        # report can only arrive late
        marker.with_name(marker.name + ".go").touch()
        await system.start_agent(spare, slots=2)
        run = await system.wait_run(run_id, timeout=90)
        # looked at before it resumes: once it does, it kills that step at once
        still_running = sleeping(319)
    finally:
        victim.proc.send(signal.SIGCONT)
    assert run["status"] == "success", run
    assert still_running, "the stopped agent's step was still running"

    # it resumes, learns both attempts are no longer its own, kills, and says nothing more
    await until(system, lambda: not sleeping(319), 15, "the stale step killed")

    async def recorded() -> bool:
        current = await system.run(run_id)
        assert current is not None
        return all(job_of(current, j)["stale"] for j in ("short", "long"))

    await system.wait_for(recorded, 15, "late reports recorded as stale")
    final = await system.run(run_id)
    assert final is not None
    for name in ("short", "long"):
        job = job_of(final, name)
        assert job["attempt"] == 2 and job["status"] == "success" and job["error"] is None
        assert job["agent"]["id"] == spare.id
        (first,) = job["attempts"]
        assert first["status"] == "agent-lost"
        assert first["steps"][0]["status"] == "agent-lost"  # its late success was dropped
        assert {s["attempt"] for s in job["stale"]} == {1}
        assert {s["agent"] for s in job["stale"]} == {victim.id}
    await asyncio.sleep(2)
    counts = Counter(lines(marker))
    assert "long end 1" not in counts
    assert set(counts.values()) == {1}  # nothing twice within an attempt
    await workspaces_gone(system, victim)


SLEEPER = """
name: Sleeper
jobs:
  work:
    steps:
      - run: |
          echo "start $RUNYARD_JOB_ATTEMPT" >> "{marker}"
          if [ "$RUNYARD_JOB_ATTEMPT" = 1 ]; then sleep 320; fi
"""


async def test_a_restarted_agent_without_its_records_gets_work_within_a_heartbeat(
    system: System, tmp_path: Path
) -> None:
    await system.project("p")
    agent = await system.agent("a", projects=["p"], slots=2)
    marker = tmp_path / "marker"
    await system.pipeline("p", SLEEPER.replace("{marker}", str(marker)))
    runs = [await system.start_run("p", "Sleeper") for _ in range(2)]
    await until(system, lambda: len(sleeping(320)) == 2, 20, "both runs under way")
    await asyncio.sleep(6)  # placed well before the agent will look at its inbox again

    assert agent.proc is not None
    agent.proc.kill(signal.SIGKILL)
    shutil.rmtree(agent.dir / "state")  # a new disk: it knows nothing of its jobs
    await system.start_agent(agent, slots=2)
    restarted = time.monotonic()
    for run_id in runs:
        run = await system.wait_run(run_id, timeout=30)
        assert run["status"] == "success", run
        job = job_of(run, "work")
        assert job["attempt"] == 2
        assert job["attempts"][0]["status"] == "interrupted"
    # its two slots were free with its first heartbeat after it looked at its inbox
    assert time.monotonic() - restarted < 8


async def test_an_agent_without_a_broker_backs_off_and_stops_at_once(
    system: System, stack: Stack
) -> None:
    await system.project("p")
    agent = await system.agent("a", projects=["p"])
    assert agent.proc is not None
    async with nats_down(stack):
        await asyncio.sleep(8)
        agent.proc.send(signal.SIGINT)
        asked = time.monotonic()
        agent.proc.popen.wait(10)
        took = time.monotonic() - asked
    out = agent.proc.output()
    assert took < 3, out
    assert agent.proc.popen.returncode == 0, out
    assert "Traceback" not in out
    tries = [ln for ln in out.splitlines() if "cannot reach NATS" in ln]
    waits = [float(ln.rsplit("retrying in ", 1)[1].split()[0]) for ln in tries]
    assert 3 <= len(tries) <= 8, out  # one line a try, not one every half second
    assert waits == sorted(waits) and waits[-1] > waits[0]

    # and one that never reached it
    await system.start_agent(agent, wait=False, nats_url="nats://127.0.0.1:9")
    proc = agent.proc

    async def tried() -> bool:  # a loaded machine can take seconds to import the agent
        return "cannot reach NATS" in proc.output()

    await system.wait_for(tried, 20, "the agent's first try")
    proc.send(signal.SIGINT)
    asked = time.monotonic()
    proc.popen.wait(10)
    assert time.monotonic() - asked < 2
    assert proc.popen.returncode == 0, proc.output()
    assert "Traceback" not in proc.output()
