"""The run state machine, driven by hand: no processes, no I/O."""

from __future__ import annotations

from typing import Any

from runyard.engine.contexts import RunInfo
from runyard.engine.events import (
    Command,
    Event,
    FinishJob,
    JobEnded,
    JobStarted,
    RunDone,
    RunStep,
    StartJob,
    StepDone,
    StopJob,
)
from runyard.engine.machine import Engine
from runyard.engine.plan import compile_plan, expand_matrix
from runyard.engine.state import RunState
from runyard.pipeline.validate import validate_text
from schemas.status import Status

INFO = RunInfo(run={"id": "r1"}, pipeline={"name": "p"}, inputs={"n": 2})


def engine(text: str) -> Engine:
    result = validate_text(text, "p.yaml")
    assert result.pipeline is not None, result.problems
    return Engine(compile_plan(result.pipeline), INFO)


def started(job: str, attempt: int = 1) -> JobStarted:
    return JobStarted(job=job, attempt=attempt, at=1.0)


def done(
    job: str, index: int, status: Status = Status.SUCCESS, attempt: int = 1, **outputs: Any
) -> StepDone:
    return StepDone(
        job=job,
        attempt=attempt,
        index=index,
        status=status,
        outputs=outputs,
        started_at=1.0,
        finished_at=2.0,
    )


def kinds(commands: list[Command]) -> list[str]:
    return [type(c).__name__ for c in commands]


TWO_JOBS = """name: p
jobs:
  a:
    outputs: {x: "${{ steps.s.outputs.v }}"}
    steps: [{id: s, run: "echo ${{ input.n }}"}]
  b:
    needs: a
    steps: [{run: "echo ${{ needs.a.outputs.x }}"}]
"""


def test_jobs_run_in_needs_order_and_outputs_flow() -> None:
    e = engine(TWO_JOBS)
    assert e.start(0.0) == [StartJob("a", 1, [], None)]
    [cmd] = e.apply(started("a"))
    assert isinstance(cmd, RunStep) and cmd.step.env["RY_EXPR_1"] == "2"
    assert kinds(e.apply(done("a", 0, v=7))) == ["FinishJob", "StartJob"]
    [cmd] = e.apply(started("b"))
    assert isinstance(cmd, RunStep) and cmd.step.env["RY_EXPR_1"] == "7"
    assert e.apply(done("b", 0)) == [FinishJob("b", 1, Status.SUCCESS), RunDone(Status.SUCCESS)]


def test_a_running_step_has_a_start_time_until_its_agent_says_when() -> None:
    e = engine(TWO_JOBS)
    e.start(0.0)
    e.apply(started("a"))  # at 1.0: the step is sent then
    step = e.state.jobs["a"].steps[0]
    assert step.status == Status.RUNNING and step.started_at == 1.0
    e.apply(
        StepDone(
            job="a", attempt=1, index=0, status=Status.SUCCESS, started_at=1.5, finished_at=2.0
        )
    )
    assert step.started_at == 1.5


def test_replaying_the_same_events_gives_the_same_state() -> None:
    events: list[Event] = [started("a"), done("a", 0, v=1), started("b"), done("b", 0)]
    first = engine(TWO_JOBS)
    first.start(0.0)
    for event in events:
        first.apply(event)
    again = engine(TWO_JOBS)
    again.start(0.0)
    for event in events + events:  # duplicates change nothing
        again.apply(event)
    assert again.state == first.state
    restored = RunState.model_validate_json(first.state.model_dump_json())
    assert restored == first.state


def test_failed_need_skips_dependents() -> None:
    e = engine(TWO_JOBS)
    e.start(0.0)
    e.apply(started("a"))
    commands = e.apply(done("a", 0, Status.FAILURE))
    assert commands[-1] == RunDone(Status.FAILURE)
    assert e.state.jobs["b"].status == Status.SKIPPED


def test_agent_lost_is_retried_as_a_new_attempt() -> None:
    e = engine("name: p\njobs:\n  a:\n    steps: [{run: x}]\n")
    e.start(0.0)
    e.apply(started("a"))
    commands = e.apply(JobEnded(job="a", attempt=1, status=Status.AGENT_LOST, at=2.0))
    assert commands == [FinishJob("a", 1, Status.AGENT_LOST), StartJob("a", 2, [], None)]
    assert e.apply(done("a", 0)) == []  # a late result of attempt 1 is ignored
    e.apply(started("a", 2))
    assert e.apply(done("a", 0, attempt=2))[-1] == RunDone(Status.SUCCESS)


def test_later_steps_see_their_own_attempts_earlier_steps() -> None:
    e = engine(
        "name: p\njobs:\n  a:\n    retry: {max: 1, when: [failure]}\n    steps:\n"
        "      - {id: s, run: x}\n"
        "      - {id: f, run: x, continue-on-error: true}\n"
        "      - {run: 'echo ${{ steps.s.outputs.v }} ${{ steps.f.outcome }}'}\n"
        "      - {run: 'false'}\n"
    )
    e.start(0.0)
    e.apply(started("a"))
    e.apply(done("a", 0, v="one"))
    [cmd] = e.apply(done("a", 1, Status.FAILURE))
    assert isinstance(cmd, RunStep) and cmd.step.env["RY_EXPR_1"] == "one"
    assert cmd.step.env["RY_EXPR_2"] == "failure"
    e.apply(done("a", 2))
    assert kinds(e.apply(done("a", 3, Status.FAILURE))) == ["FinishJob", "StartJob"]
    e.apply(started("a", attempt=2))
    e.apply(done("a", 0, attempt=2, v="two"))
    [cmd] = e.apply(done("a", 1, attempt=2))
    assert isinstance(cmd, RunStep) and cmd.step.env["RY_EXPR_1"] == "two"  # not attempt 1's
    assert cmd.step.env["RY_EXPR_2"] == "success"


def test_a_retry_cut_off_mid_job_does_not_see_the_last_attempts_steps() -> None:
    e = engine(
        "name: p\njobs:\n  a:\n    steps:\n"
        "      - {id: s, run: x}\n"
        "      - {run: 'echo ${{ steps.s.outputs.v }}'}\n"
    )
    e.start(0.0)
    e.apply(started("a"))
    [cmd] = e.apply(done("a", 0, v="one"))
    assert isinstance(cmd, RunStep) and cmd.step.env["RY_EXPR_1"] == "one"
    e.apply(JobEnded(job="a", attempt=1, status=Status.AGENT_LOST, at=1.0))  # retried
    e.apply(started("a", attempt=2))
    [cmd] = e.apply(done("a", 0, attempt=2, v="two"))
    assert isinstance(cmd, RunStep) and cmd.step.env["RY_EXPR_1"] == "two"


def test_retries_run_out() -> None:
    e = engine("name: p\njobs:\n  a:\n    retry: 1\n    steps: [{run: x}]\n")
    e.start(0.0)
    for attempt in (1, 2):
        e.apply(started("a", attempt))
        commands = e.apply(JobEnded(job="a", attempt=attempt, status=Status.AGENT_LOST, at=1.0))
    assert commands[-1] == RunDone(Status.FAILURE)
    assert e.state.jobs["a"].status == Status.AGENT_LOST


def test_job_timeout_and_timeout_seconds() -> None:
    e = engine("name: p\njobs:\n  a:\n    timeout: 2\n    steps: [{run: x, timeout: 0.5}]\n")
    assert e.start(0.0) == [StartJob("a", 1, [], 120.0)]
    [cmd] = e.apply(started("a"))
    assert isinstance(cmd, RunStep) and cmd.step.timeout == 30.0
    commands = e.apply(JobEnded(job="a", attempt=1, status=Status.TIMED_OUT, at=3.0))
    assert commands[-1] == RunDone(Status.FAILURE)
    assert e.state.jobs["a"].steps[0].status == Status.TIMED_OUT


def test_matrix_fail_fast_cancels_siblings() -> None:
    e = engine("name: p\njobs:\n  m:\n    strategy: {matrix: {x: [1, 2]}}\n    steps: [{run: x}]\n")
    assert kinds(e.start(0.0)) == ["StartJob", "StartJob"]
    e.apply(started("m~1"))
    e.apply(started("m~2"))
    commands = e.apply(done("m~1", 0, Status.FAILURE))
    assert StopJob("m~2", 1, Status.CANCELLED) in commands
    final = e.apply(done("m~2", 0, Status.CANCELLED))
    assert final[-1] == RunDone(Status.FAILURE)
    assert e.state.jobs["m~2"].status == Status.CANCELLED


def test_max_parallel_limits_instances() -> None:
    e = engine(
        "name: p\njobs:\n  m:\n    strategy: {matrix: {x: [1, 2, 3]}, max-parallel: 1}\n"
        "    steps: [{run: x}]\n"
    )
    assert e.start(0.0) == [StartJob("m~1", 1, [], None)]
    e.apply(started("m~1"))
    assert e.apply(done("m~1", 0))[-1] == StartJob("m~2", 1, [], None)


def test_cancel_before_start_and_always_steps() -> None:
    from runyard.engine.events import RunCancelled

    e = engine(
        "name: p\njobs:\n  a:\n    steps: [{run: x}, {run: y, if: always()}]\n"
        "  b:\n    needs: a\n    steps: [{run: z}]\n"
    )
    e.start(0.0)
    e.apply(started("a"))
    assert e.apply(RunCancelled(at=1.0)) == [StopJob("a", 1, Status.CANCELLED)]
    [cmd] = e.apply(done("a", 0, Status.CANCELLED))
    assert isinstance(cmd, RunStep) and cmd.step.index == 1  # always() still runs
    final = e.apply(done("a", 1))
    assert final[-1] == RunDone(Status.CANCELLED)
    assert e.state.jobs["b"].status == Status.CANCELLED


def test_expand_matrix_include_exclude() -> None:
    combos = expand_matrix(
        {
            "os": ["linux", "mac"],
            "py": [3.11, 3.12],
            "exclude": [{"os": "mac", "py": 3.11}],
            "include": [{"os": "linux", "gpu": True}, {"os": "win", "py": 3.12}],
        }
    )
    assert combos == [
        {"os": "linux", "py": 3.11, "gpu": True},
        {"os": "linux", "py": 3.12, "gpu": True},
        {"os": "mac", "py": 3.12},
        {"os": "win", "py": 3.12},
    ]


def test_a_step_the_agent_cancelled_cancels_its_job() -> None:
    e = engine(
        "name: p\njobs:\n  a:\n    steps:\n      - run: one\n      - run: two\n"
        "      - run: cleanup\n        if: ${{ always() }}\n"
    )
    e.start(0.0)
    e.apply(started("a"))
    commands = e.apply(done("a", 0, Status.CANCELLED))
    assert [c.step.index for c in commands if isinstance(c, RunStep)] == [2]
    commands = e.apply(done("a", 2))
    assert [s.status for s in e.state.jobs["a"].steps] == [
        Status.CANCELLED,
        Status.SKIPPED,
        Status.SUCCESS,
    ]
    assert e.state.jobs["a"].status == Status.CANCELLED
    assert e.state.status == Status.FAILURE
    assert isinstance(commands[-1], RunDone)


INTERRUPTIBLE = """name: p
jobs:
  a:
    steps:
      - run: one
      - run: two
      - {run: cleanup, if: "${{ always() }}"}
"""


def test_an_interrupted_step_ends_its_attempt_and_the_retry_starts_over() -> None:
    e = engine(INTERRUPTIBLE)
    e.start(0.0)
    e.apply(started("a"))
    e.apply(done("a", 0))
    gone = done("a", 1, Status.INTERRUPTED).model_copy(update={"error": "agent restarted"})
    commands = e.apply(gone)
    # no further step of attempt 1 runs, not even `always()`: its workspace is gone
    assert commands == [FinishJob("a", 1, Status.INTERRUPTED), StartJob("a", 2, [], None)]
    job = e.state.jobs["a"]
    (first,) = job.attempts
    assert first.attempt == 1 and first.status == Status.INTERRUPTED
    assert [s.status for s in first.steps] == [Status.SUCCESS, Status.INTERRUPTED, Status.SKIPPED]
    assert first.error == "agent restarted"
    assert [s.status for s in job.steps] == [Status.QUEUED] * 3  # attempt 2 starts over
    assert e.apply(done("a", 2)) == []  # attempt 1 is over: nothing more of it counts


def test_a_retried_job_keeps_no_error_of_its_earlier_attempt() -> None:
    e = engine("name: p\njobs:\n  a:\n    steps: [{run: x}]\n")
    e.start(0.0)
    e.apply(started("a"))
    lost = JobEnded(job="a", attempt=1, status=Status.AGENT_LOST, error="agent a lost", at=2.0)
    e.apply(lost)
    e.apply(JobStarted(job="a", attempt=2, host={"agent": {"id": "b"}}, at=3.0))
    assert e.apply(done("a", 0, attempt=2))[-1] == RunDone(Status.SUCCESS)
    job = e.state.jobs["a"]
    assert job.status == Status.SUCCESS and job.error is None
    assert job.attempts[0].error == "agent a lost"
    assert job.attempts[0].steps[0].status == Status.AGENT_LOST


def test_interrupted_retries_under_agent_lost_and_not_otherwise() -> None:
    e = engine(
        "name: p\njobs:\n  a:\n    retry: {max: 2, when: [failure]}\n    steps: [{run: x}]\n"
    )
    e.start(0.0)
    e.apply(started("a"))
    commands = e.apply(JobEnded(job="a", attempt=1, status=Status.INTERRUPTED, at=2.0))
    assert commands[-1] == RunDone(Status.FAILURE)
    assert e.state.jobs["a"].status == Status.INTERRUPTED
