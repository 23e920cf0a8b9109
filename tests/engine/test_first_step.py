"""A job's first step sent with its assignment (`Engine(send_first=True)`, the
dispatcher's): when it may be, and how its claim and result are taken in either order."""

from __future__ import annotations

from typing import Any

from runyard.engine.contexts import RunInfo
from runyard.engine.events import JobEnded, JobStarted, RunStep, StartJob, StepDone
from runyard.engine.machine import Engine
from runyard.engine.plan import compile_plan
from runyard.pipeline.validate import validate_text
from schemas.status import Status

INFO = RunInfo(run={"id": "r1"}, pipeline={"name": "p"}, secrets={"TOKEN": "s3cret"})
HOST = {"agent": {"id": "a1", "name": "one"}, "machine": {"name": "m"}, "python": {"version": "3"}}
TWO_STEPS = """name: p
jobs:
  a:
    retry: {max: 1, when: [agent-lost]}
    steps:
      - {id: first, run: "echo ${{ run.id }} ${{ secrets.TOKEN }}"}
      - {id: second, run: "echo ${{ agent.name }}"}
"""


def engine(text: str = TWO_STEPS) -> Engine:
    result = validate_text(text, "p.yaml")
    assert result.pipeline is not None, result.problems
    return Engine(compile_plan(result.pipeline), INFO, send_first=True)


def claim(first: bool, attempt: int = 1) -> JobStarted:
    return JobStarted(job="a", attempt=attempt, host=HOST, first=first, at=1.0)


def done(index: int, host: dict[str, Any] | None = None) -> StepDone:
    return StepDone(
        job="a",
        attempt=1,
        index=index,
        status=Status.SUCCESS,
        started_at=1.5,
        finished_at=2.0,
        host=host or {},
    )


def step_status(e: Engine, index: int) -> Status:
    return e.state.jobs["a"].steps[index].status


def first_of(e: Engine) -> StartJob:
    (start,) = e.start(0.0)
    assert isinstance(start, StartJob)
    return start


def test_the_first_step_goes_with_the_job_and_its_claim_sends_nothing() -> None:
    e = engine()
    start = first_of(e)
    assert start.first is not None and start.first.index == 0
    assert start.first.mask == ["s3cret"]  # resolved as its step.assign would be
    job = e.state.jobs["a"]
    assert job.first_sent and step_status(e, 0) == Status.QUEUED  # not before a claim
    assert e.apply(claim(first=True)) == []
    assert step_status(e, 0) == Status.RUNNING and job.host == HOST
    (second,) = e.apply(done(0))
    assert isinstance(second, RunStep) and second.step.index == 1
    assert second.step.env["RY_EXPR_1"] == "one"  # the claim's contexts


def test_its_result_may_come_before_the_claim() -> None:
    e = engine()
    first_of(e)
    (second,) = e.apply(done(0, HOST))
    assert isinstance(second, RunStep) and second.step.index == 1
    job = e.state.jobs["a"]
    assert job.status == Status.RUNNING and job.host == HOST
    assert job.steps[0].status == Status.SUCCESS and job.steps[0].started_at == 1.5
    assert e.apply(claim(first=True)) == []  # late: nothing is sent twice
    assert job.steps[1].status == Status.RUNNING


def test_a_job_placed_later_without_it_gets_its_first_step_after_the_claim() -> None:
    e = engine()
    first_of(e)
    (sent,) = e.apply(claim(first=False))  # the agent's job.assign came from the queue
    assert isinstance(sent, RunStep) and sent.step.index == 0
    assert not e.state.jobs["a"].first_sent


def test_steps_that_depend_on_the_claim_are_not_sent_ahead() -> None:
    for step in (
        '{run: "echo ${{ machine.name }}"}',  # where it runs
        "{run: echo, if: success()}",  # its condition is evaluated at the claim
        "{run: echo, timeout: 1}",  # timed from the claim
        '{run: echo, env: {X: "${{ python.version }}"}}',
    ):
        e = engine(f"name: p\njobs:\n  a:\n    steps:\n      - {step}\n")
        assert first_of(e).first is None, step
        assert not e.state.jobs["a"].first_sent
        (sent,) = e.apply(claim(first=False))
        assert isinstance(sent, RunStep), step


def test_a_retry_sends_its_first_step_again() -> None:
    e = engine()
    first_of(e)
    e.apply(claim(first=True))
    lost = JobEnded(job="a", attempt=1, status=Status.AGENT_LOST, at=3.0)
    commands = e.apply(lost)
    retry = commands[-1]
    assert isinstance(retry, StartJob) and retry.attempt == 2 and retry.first is not None
    job = e.state.jobs["a"]
    assert job.first_sent and job.attempts[0].steps[0].status == Status.AGENT_LOST


def test_without_send_first_nothing_changes() -> None:
    result = validate_text(TWO_STEPS, "p.yaml")
    assert result.pipeline is not None
    e = Engine(compile_plan(result.pipeline), INFO)
    assert e.start(0.0) == [StartJob("a", 1, [], None)]
    (sent,) = e.apply(claim(first=False))
    assert isinstance(sent, RunStep) and sent.step.index == 0
