"""Runs placed on agents: jobs in parallel on two agents, outputs between jobs, labels
and project assignment, one run per event, cancel from the API."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
from nats.js import JetStreamContext

from schemas import subjects
from schemas.messages import TriggerEvent
from tests.processes import alive, sleeping, wait_dead
from tests.system.harness import System, job_of, step_of

FAN_IN = """
name: Fan in
jobs:
  left:
    outputs: {v: "${{ steps.a.outputs.v }}"}
    steps:
      - id: a
        run: |
          sleep 1
          echo "value=left" >> "$RUNYARD_OUTPUT"
          echo '::v::"left"'
  right:
    outputs: {v: "${{ steps.b.outputs.v }}"}
    steps:
      - id: b
        run: |
          sleep 1
          echo '::v::"right"'
  join:
    needs: [left, right]
    outputs: {both: "${{ steps.c.outputs.both }}"}
    steps:
      - id: c
        run: |
          both="${{ needs.left.outputs.v }}+${{ needs.right.outputs.v }}"
          echo "both=$both" >> "$RUNYARD_OUTPUT"
          exit 0
"""


async def test_parallel_jobs_on_two_agents_and_outputs_flow(system: System) -> None:
    await system.project("p")
    a = await system.agent("a", projects=["p"])
    b = await system.agent("b", projects=["p"])
    await system.pipeline("p", FAN_IN)
    run_id = await system.start_run("p", "Fan in")
    run = await system.wait_run(run_id)
    assert run["status"] == "success", run
    assert run["number"] == 1
    left, right, join = (job_of(run, k) for k in ("left", "right", "join"))
    assert {left["agent"]["id"], right["agent"]["id"]} == {a.id, b.id}
    assert left["outputs"] == {"v": "left"}
    assert join["outputs"] == {"both": "left+right"}
    step = step_of(run, "left")
    assert step["status"] == "success"
    assert step["exit_code"] == 0
    assert step["outputs"] == {"value": "left", "v": "left"}
    assert step["started_at"] <= step["finished_at"]
    assert step["finished_at"] - step["started_at"] >= 1.0
    assert join["started_at"] >= max(left["finished_at"], right["finished_at"])


GPU = """
name: Train
jobs:
  train:
    runs-on: [gpu]
    steps:
      - run: echo "on $RUNYARD_JOB"
"""


async def test_runs_on_waits_for_a_matching_agent(system: System) -> None:
    await system.project("p")
    await system.project("other")
    plain = await system.agent("plain", projects=["p"], slots=2)
    stranger = await system.agent("stranger", labels=["gpu"], projects=["other"])
    await system.pipeline("p", GPU)
    run_id = await system.start_run("p", "Train")
    await system.wait_run(run_id, status="running", timeout=20)
    await asyncio.sleep(2)  # time enough to be placed if anything could take it
    run = await system.wait_run(run_id, status="running")
    assert job_of(run, "train")["status"] == "queued"
    gpu = await system.agent("gpu", labels=["gpu", "cuda"], projects=["p"])
    run = await system.wait_run(run_id)
    assert run["status"] == "success", run
    assert job_of(run, "train")["agent"]["id"] == gpu.id
    for other in (plain, stranger):
        assert (await system.call("GET", f"/api/agents/{other.id}"))["jobs"] == []
        assert other.proc is not None
        assert "job.assign" not in other.proc.output()


ONE_STEP = """
name: Once
jobs:
  only:
    steps:
      - run: echo "ran" >> "{marker}"
"""


async def test_the_same_trigger_event_twice_makes_one_run(
    system: System, js: JetStreamContext, tmp_path: Path
) -> None:
    await system.project("p")
    await system.agent("a", projects=["p"])
    marker = tmp_path / "marker"
    await system.pipeline("p", ONE_STEP.replace("{marker}", str(marker)))
    event = TriggerEvent(
        id="delivery-1", kind="manual", project="p", pipeline="Once", created_at=time.time()
    )
    for _ in range(2):  # the second is within the duplicate window: dropped by the stream
        await js.publish(
            subjects.events("manual", "p"), event.encode(), headers={"Nats-Msg-Id": event.id}
        )
    # and once more without the header: the dispatcher's (event, pipeline) key holds
    await js.publish(subjects.events("manual", "p"), event.encode())
    from services.store.runs import run_id_for

    run = await system.wait_run(run_id_for(event.id, "p", "Once"))
    assert run["status"] == "success"
    await asyncio.sleep(1)
    runs = await system.call("GET", "/api/projects/p/pipelines/Once/runs")
    assert [r["number"] for r in runs] == [1]
    assert marker.read_text() == "ran\n"


SLEEPER = """
name: Sleeper
jobs:
  nap:
    steps:
      - run: |
          sleep 303 &
          wait
"""


async def test_cancel_stops_the_process_tree(system: System) -> None:
    await system.project("p")
    await system.agent("a", projects=["p"])
    await system.pipeline("p", SLEEPER)
    run_id = await system.start_run("p", "Sleeper")

    async def started() -> bool:
        return len(sleeping(303)) == 1

    await system.wait_for(started, 20, "the step's processes")
    (sleep,) = sleeping(303)
    pids = [sleep, psutil.Process(sleep).ppid()]  # and the step's shell
    asked = time.monotonic()
    await system.call("POST", f"/api/runs/{run_id}/cancel")
    run = await system.wait_run(run_id, timeout=10)
    assert wait_dead(pids, 5) == [], [p for p in pids if alive(p)]
    assert time.monotonic() - asked < 5 + 1
    assert run["status"] == "cancelled"
    assert step_of(run, "nap")["status"] == "cancelled"
