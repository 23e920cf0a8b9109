"""`concurrency` groups: one run of a group at a time, in order; or, with
`cancel-in-progress: true`, the newer run cancels the older."""

from __future__ import annotations

from pathlib import Path

from tests.system.harness import System

QUEUED = """
name: Deploy
concurrency: deploy-${{ input.target }}
triggers:
  manual:
    form: {properties: {target: {type: string, default: prod}}}
jobs:
  go:
    steps:
      - run: |
          echo "start $RUNYARD_RUN_ID" >> "{marker}"
          sleep 0.5
          echo "end $RUNYARD_RUN_ID" >> "{marker}"
"""


async def test_runs_of_a_group_run_one_after_another_in_order(
    system: System, tmp_path: Path
) -> None:
    await system.project("p")
    await system.agent("a", projects=["p"], slots=4)
    marker = tmp_path / "marker"
    await system.pipeline("p", QUEUED.replace("{marker}", str(marker)))
    runs = [await system.start_run("p", "Deploy") for _ in range(3)]
    other = await system.start_run("p", "Deploy", target="staging")  # another group
    for run_id in [*runs, other]:
        assert (await system.wait_run(run_id))["status"] == "success"
    lines = [line for line in marker.read_text().splitlines() if other not in line]
    assert lines == [f"{what} {r}" for r in runs for what in ("start", "end")]
    numbers = [(await system.run(r) or {})["number"] for r in runs]
    assert numbers == sorted(numbers)


CANCELLING = """
name: Train
concurrency: {group: train, cancel-in-progress: true}
triggers:
  manual:
    form: {properties: {nap: {type: integer, default: 0}}}
jobs:
  go:
    steps:
      - run: sleep ${{ input.nap }}
"""


async def test_cancel_in_progress_cancels_the_older_run(system: System) -> None:
    await system.project("p")
    await system.agent("a", projects=["p"], slots=2)
    await system.pipeline("p", CANCELLING)
    older = await system.start_run("p", "Train", nap=60)
    await system.wait_run(older, status="running", timeout=20)
    newer = await system.start_run("p", "Train", nap=0)
    assert (await system.wait_run(older, timeout=30))["status"] == "cancelled"
    assert (await system.wait_run(newer, timeout=30))["status"] == "success"
