"""Re-running failed jobs: carried jobs start succeeded and only the rest run."""

from __future__ import annotations

from runyard.engine import carry
from runyard.engine.events import Event, JobEnded, RunDone, RunStep, StartJob
from runyard.engine.machine import Engine
from runyard.engine.plan import compile_plan
from runyard.engine.state import ReusedFrom, RunState
from runyard.pipeline.validate import validate_text
from schemas.status import Status
from tests.engine.test_machine import INFO, done, kinds, started

THREE_JOBS = """name: p
jobs:
  a:
    outputs: {x: "${{ steps.s.outputs.v }}"}
    steps: [{id: s, run: "echo a"}]
  b:
    steps: [{run: "echo b"}]
  c:
    needs: [a, b]
    steps: [{run: "echo ${{ needs.a.outputs.x }}"}]
"""


def engine(text: str, carried: dict[str, carry.Carried] | None = None) -> Engine:
    result = validate_text(text, "p.yaml")
    assert result.pipeline is not None, result.problems
    return Engine(compile_plan(result.pipeline), INFO, carried=carried)


def failed_run() -> RunState:
    """THREE_JOBS run once: a succeeded with x=7, b failed, c skipped."""
    e = engine(THREE_JOBS)
    e.start(0.0)
    e.apply(started("a"))
    e.apply(done("a", 0, v=7))
    e.apply(started("b"))
    assert e.apply(done("b", 0, Status.FAILURE))[-1] == RunDone(Status.FAILURE)
    return e.state


def test_a_carried_job_is_not_started_and_its_outputs_reach_its_dependants() -> None:
    carried = carry.succeeded(failed_run(), number=3)
    assert set(carried) == {"a"}
    e = engine(THREE_JOBS, carried)
    a = e.state.jobs["a"]
    assert a.status == Status.SUCCESS and a.outputs == {"x": 7}
    assert a.reused_from == ReusedFrom(run="r1", number=3, attempt=1)
    assert a.steps[0].status == Status.SUCCESS  # as it ended in run #3
    assert e.start(0.0) == [StartJob("b", 1, [], None)]
    e.apply(started("b"))
    assert kinds(e.apply(done("b", 0))) == ["FinishJob", "StartJob"]  # c
    [cmd] = e.apply(started("c"))
    assert isinstance(cmd, RunStep) and cmd.step.env["RY_EXPR_1"] == "7"
    assert e.apply(done("c", 0))[-1] == RunDone(Status.SUCCESS)
    assert e.state.jobs["a"].attempt == 1 and e.state.jobs["a"].reused_from is not None
    assert e.state.jobs["c"].reused_from is None


def test_a_job_that_needs_one_run_again_is_not_carried() -> None:
    given = {k: carry.Carried({}, "r0") for k in ("a", "c")}  # b is not carried
    e = engine(THREE_JOBS, given)
    assert e.state.jobs["a"].status == Status.SUCCESS
    assert e.state.jobs["c"].status == Status.QUEUED
    assert e.state.jobs["c"].reused_from is None


def test_matrix_instances_are_carried_one_by_one() -> None:
    text = (
        "name: p\njobs:\n  m:\n    strategy: {matrix: {x: [1, 2]}}\n    steps: [{run: x}]\n"
        "  after:\n    needs: m\n    steps: [{run: y}]\n"
    )
    e = engine(text, {"m~1": carry.Carried({}, "r0")})
    assert e.state.jobs["m~1"].status == Status.SUCCESS
    assert e.start(0.0) == [StartJob("m~2", 1, [], None)]  # `after` waits for m~2
    e.apply(started("m~2"))
    assert kinds(e.apply(done("m~2", 0))) == ["FinishJob", "StartJob"]


def test_a_job_carried_twice_points_at_the_run_it_ran_in() -> None:
    first = carry.succeeded(failed_run(), number=3)
    again = engine(THREE_JOBS, first)
    again.start(0.0)
    again.apply(started("b"))
    again.apply(done("b", 0, Status.FAILURE))
    assert carry.succeeded(again.state, number=4)["a"].number == 3
    assert carry.failed_any(again.state) and not carry.failed_any(RunState(id="x"))


def test_a_job_that_succeeded_on_a_retry_points_at_that_attempt() -> None:
    e = engine("name: p\njobs:\n  a:\n    steps: [{run: x}]\n")
    e.start(0.0)
    e.apply(started("a"))
    e.apply(JobEnded(job="a", attempt=1, status=Status.AGENT_LOST, at=2.0))
    e.apply(started("a", 2))
    e.apply(done("a", 0, attempt=2))
    assert carry.succeeded(e.state)["a"].attempt == 2
    again = engine("name: p\njobs:\n  a:\n    steps: [{run: x}]\n", carry.succeeded(e.state))
    reused = again.state.jobs["a"].reused_from
    assert reused is not None and reused.attempt == 2
    assert again.start(0.0) == [RunDone(Status.SUCCESS)]  # nothing left to run


def test_a_job_skipped_by_its_if_alone_is_no_failure() -> None:
    e = engine("name: p\njobs:\n  a:\n    if: false\n    steps: [{run: x}]\n")
    assert e.start(0.0) == [RunDone(Status.SUCCESS)]
    assert not carry.failed_any(e.state)


def test_changed_steps_are_not_copied() -> None:
    steps = carry.succeeded(failed_run())["a"].steps
    renamed = [s.model_copy(update={"id": "other"}) for s in steps]
    e = engine(THREE_JOBS, {"a": carry.Carried({"x": "1"}, "r0", 1, renamed)})
    assert e.state.jobs["a"].steps[0].status == Status.SKIPPED
    assert e.state.jobs["a"].status == Status.SUCCESS


def test_replaying_a_rerun_gives_the_same_state() -> None:
    carried = carry.succeeded(failed_run(), number=3)
    events: list[Event] = [started("b"), done("b", 0), started("c"), done("c", 0)]
    first = engine(THREE_JOBS, carried)
    first.start(0.0)
    for event in events:
        first.apply(event)
    again = engine(THREE_JOBS, carried)
    again.start(0.0)
    for event in events + events:
        again.apply(event)
    assert again.state == first.state
    assert RunState.model_validate_json(first.state.model_dump_json()) == first.state
