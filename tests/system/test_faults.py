"""Nothing lost, nothing twice: an agent killed mid-step, a dispatcher killed and
restarted, nats-server restarted or down for 20 s, two dispatchers on one consumer."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
from nats.js import JetStreamContext

from schemas import subjects
from schemas.messages import LogBatch
from services.stack import Server, Stack
from tests.system.harness import System, job_of, step_of

LONG_FIRST_ATTEMPT = """
name: Long
jobs:
  work:
    steps:
      - run: |
          echo "start $RUNYARD_JOB_ATTEMPT" >> "{marker}"
          if [ "$RUNYARD_JOB_ATTEMPT" = 1 ]; then sleep 301; fi
          echo "end $RUNYARD_JOB_ATTEMPT" >> "{marker}"
"""
LONG = ["sleep", "301"]


async def test_a_killed_agent_is_lost_and_its_job_runs_elsewhere(
    system: System, tmp_path: Path
) -> None:
    await system.project("p")
    agents = [await system.agent(name, projects=["p"]) for name in ("a", "b")]
    marker = tmp_path / "marker"
    await system.pipeline("p", LONG_FIRST_ATTEMPT.replace("{marker}", str(marker)))
    run_id = await system.start_run("p", "Long")

    async def started() -> bool:
        return marker.exists() and "start 1" in marker.read_text()

    await system.wait_for(started, 20, "the first attempt")
    victim_id = await system.holder(run_id, "work")
    victim = next(a for a in agents if a.id == victim_id)
    assert victim.proc is not None
    victim.proc.kill(signal.SIGKILL)
    killed = time.monotonic()
    run = await system.wait_run(run_id, timeout=60)
    assert time.monotonic() - killed < 45 + 10  # lost after 30 s, re-run takes moments
    assert run["status"] == "success", run
    job = job_of(run, "work")
    assert job["attempt"] == 2
    assert job["agent"]["id"] != victim_id
    assert step_of(run, "work")["status"] == "success"
    # its step ran in its own process group, and still died with it (agent/reaper.py)
    survivors = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(victim.dir) in " ".join(p.info["cmdline"] or []) or p.info["cmdline"] == LONG
    ]
    assert survivors == []
    # the killed agent comes back: the stale step it was given is not run again
    await system.start_agent(victim)
    await asyncio.sleep(3)
    assert marker.read_text().splitlines() == ["start 1", "start 2", "end 2"]
    run = await system.wait_run(run_id)
    assert job_of(run, "work")["attempt"] == 2


STEPS = """
name: Steps
jobs:
  work:
    steps:
{steps}
"""


def steps_pipeline(marker: Path, count: int, sleep: float = 0) -> str:
    lines = []
    for i in range(count):
        lines.append(f'      - run: echo "$RUNYARD_RUN_ID {i}" >> "{marker}"; sleep {sleep}')
    return STEPS.replace("{steps}", "\n".join(lines))


def assert_once_each(marker: Path, runs: list[str], steps: int) -> None:
    counts = Counter(marker.read_text().splitlines())
    expected = {f"{r} {i}" for r in runs for i in range(steps)}
    assert set(counts) == expected
    assert [line for line, n in counts.items() if n != 1] == []


async def six_steps_under_way(system: System, marker: Path) -> str:
    """A run of six half-second steps, two of them done."""
    await system.project("p")
    await system.agent("a", projects=["p"])
    await system.pipeline("p", steps_pipeline(marker, 6, 0.5))
    run_id = await system.start_run("p", "Steps")

    async def two_steps() -> bool:
        return marker.exists() and len(marker.read_text().splitlines()) >= 2

    await system.wait_for(two_steps, 20, "two steps")
    return run_id


async def test_a_killed_dispatcher_is_replaced_and_the_run_completes(
    system: System, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    run_id = await six_steps_under_way(system, marker)
    system.procs[0].kill(signal.SIGKILL)  # the dispatcher
    await asyncio.sleep(1)
    system.dispatcher()
    run = await system.wait_run(run_id, timeout=60)
    assert run["status"] == "success", run
    assert_once_each(marker, [run_id], 6)


def _nats(stack: Stack) -> Server:
    return next(s for s in stack.servers if s.name == "nats-server")


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@contextlib.asynccontextmanager
async def nats_down(stack: Stack) -> AsyncIterator[None]:
    """nats-server stopped inside the block, started again (same port, same store)."""
    server = _nats(stack)
    server.stop()
    try:
        yield
    finally:
        server.start()
        for _ in range(300):  # up to 15 s
            if _answers(server.port):
                break
            await asyncio.sleep(0.05)


async def test_nats_restart_mid_run_loses_and_repeats_nothing(
    system: System, stack: Stack, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    run_id = await six_steps_under_way(system, marker)
    async with nats_down(stack):
        await asyncio.sleep(0.5)
    run = await system.wait_run(run_id, timeout=90)
    assert run["status"] == "success", run
    assert_once_each(marker, [run_id], 6)


async def test_two_dispatchers_run_every_step_exactly_once(system: System, tmp_path: Path) -> None:
    system.dispatcher()
    await system.project("p")
    for name in ("a", "b"):
        await system.agent(name, projects=["p"], slots=4)
    marker = tmp_path / "marker"
    await system.pipeline("p", steps_pipeline(marker, 5))
    runs = await asyncio.gather(*(system.start_run("p", "Steps") for _ in range(50)))
    for run_id in runs:
        run = await system.wait_run(run_id, timeout=120)
        assert run["status"] == "success", run
    assert_once_each(marker, list(runs), 5)


PRINTER = """
name: Printer
jobs:
  print:
    steps:
      - id: count
        run: |
          for i in $(seq 1 {lines}); do echo "line $i"; sleep 0.05; done
          echo "::done::true"
"""


async def _log_lines(js: JetStreamContext, agent: str, run_id: str) -> list[int]:
    subject = subjects.agent_logs(agent, run_id, "print", "count")
    sub = await js.subscribe(subject, ordered_consumer=True)
    seqs: list[int] = []
    with contextlib.suppress(TimeoutError):
        while True:
            msg = await sub.next_msg(timeout=2)
            seqs += [line.seq for line in LogBatch.model_validate_json(msg.data).lines]
    await sub.unsubscribe()
    return seqs


async def test_a_step_outlives_20_s_without_nats(
    system: System, stack: Stack, js: JetStreamContext, tmp_path: Path
) -> None:
    lines = 500  # about 25 s of printing
    await system.project("p")
    agent = await system.agent("a", projects=["p"])
    await system.pipeline("p", PRINTER.replace("{lines}", str(lines)))
    run_id = await system.start_run("p", "Printer")
    await system.wait_run(run_id, status="running", timeout=20)
    await asyncio.sleep(2)
    async with nats_down(stack):
        await asyncio.sleep(20)
    run = await system.wait_run(run_id, timeout=90)
    assert run["status"] == "success", run
    step = step_of(run, "print")
    assert step["outputs"] == {"done": True}
    assert step["finished_at"] - step["started_at"] > 20  # it ran on through the outage
    seqs = await _log_lines(js, agent.id, run_id)
    assert seqs == list(range(1, lines + 2))  # every line once, in order (+ the output line)
