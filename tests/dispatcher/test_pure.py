"""The dispatcher's pure parts: placement and the effects of engine commands."""

from __future__ import annotations

import orjson

from runyard.engine.contexts import RunInfo
from runyard.engine.events import (
    FinishJob,
    JobEnded,
    JobStarted,
    RunDone,
    RunStep,
    StartJob,
    StopJob,
)
from runyard.engine.machine import Engine
from runyard.engine.plan import compile_plan
from runyard.pipeline.validate import validate_text
from schemas import subjects
from schemas.messages import Heartbeat, Metrics, StepFinished, decode_inbox
from schemas.status import Status
from services.dispatcher import effects, fencing
from services.dispatcher.placement import Candidate, choose

FACTS = effects.RunFacts("r1", "p", "Pipe", None, None, None)


def agent(
    name: str,
    labels: set[str],
    used: int = 0,
    slots: int = 2,
    projects: frozenset[str] = frozenset({"p"}),
) -> Candidate:
    return Candidate(name, frozenset(labels), projects, slots, used)


def test_choose_needs_project_labels_and_a_free_slot() -> None:
    agents = [
        agent("other-project", {"gpu"}, projects=frozenset({"q"})),
        agent("no-gpu", set()),
        agent("full", {"gpu"}, used=2),
        agent("fits", {"gpu", "cuda"}),
    ]
    chosen = choose(agents, "p", ["gpu"])
    assert chosen is not None and chosen.id == "fits"
    assert choose(agents, "p", ["tpu"]) is None
    assert choose(agents[:3], "p", ["gpu"]) is None


def test_choose_spreads_load() -> None:
    agents = [
        agent("busy", set(), used=1),
        agent("idle", set()),
        agent("big", set(), slots=8, used=1),
    ]
    chosen = choose(agents, "p", [])
    assert chosen is not None and chosen.id == "idle"


def _engine() -> Engine:
    result = validate_text(
        "name: Pipe\njobs:\n  a:\n    timeout: 1\n    steps:\n"
        "      - run: echo hi\n        timeout: 0.5\n",
        "p.yaml",
    )
    assert result.pipeline is not None
    return Engine(compile_plan(result.pipeline), RunInfo(run={"id": "r1"}, pipeline={}))


def test_start_job_queues_an_assignment() -> None:
    e = _engine()
    commands = e.start(10.0)
    assert isinstance(commands[0], StartJob)
    fx = effects.translate(commands, e.plan, e.state, FACTS, 10.0)
    ((member, score, info),) = fx.enqueue
    assert (member, score) == ("r1|a|1", 10.0)
    wanted = orjson.loads(info)
    assert wanted["project"] == "p" and wanted["runs_on"] == []
    assign = decode_inbox(wanted["assign"].encode())
    assert assign.type == "job.assign" and assign.timeout == 60.0


def test_steps_go_to_the_claiming_agent_with_a_silent_agent_timer() -> None:
    e = _engine()
    e.start(0.0)
    commands = e.apply(JobStarted(job="a", attempt=1, host={"agent": {"id": "ag1"}}, at=1.0))
    assert isinstance(commands[0], RunStep)
    fx = effects.translate(commands, e.plan, e.state, FACTS, 1.0)
    ((msg_id, subject, data),) = fx.outbox
    assert msg_id == "step:r1|a|1|0"
    assert subject == subjects.agent_inbox("ag1")
    step = decode_inbox(data)
    assert step.type == "step.assign" and step.step.script is not None
    assert step.step == commands[0].step  # the engine's resolved step, as it is
    ((timer, deadline),) = fx.timers
    assert timer == "step|r1|a|1|0"
    assert deadline == 1.0 + 30 + effects.CANCEL_GRACE + effects.SILENT_AGENT_SLACK


def test_stop_and_finish() -> None:
    e = _engine()
    e.start(0.0)
    e.apply(JobStarted(job="a", attempt=1, host={"agent": {"id": "ag1"}}, at=1.0))
    fx = effects.translate([StopJob("a", 1, Status.CANCELLED)], e.plan, e.state, FACTS, 2.0)
    ((subject, _),) = fx.control
    assert subject == subjects.agent_control("ag1")
    assert fx.timers == [("stop|r1|a|1", 2.0 + effects.CANCEL_GRACE + effects.CANCEL_SLACK)]
    fx = effects.translate(
        [FinishJob("a", 1, Status.SUCCESS), RunDone(Status.SUCCESS)], e.plan, e.state, FACTS, 3.0
    )
    assert [i for i, _, _ in fx.outbox] == ["finish:r1|a|1"]
    assert fx.chain is not None  # sent only when a pipeline listens (chains.listened)
    assert fx.chain[:2] == ("chain:r1", subjects.events("pipeline", "p"))
    assert {"job|r1|a|1", "stop|r1|a|1", "step|r1|a|1|0"} <= set(fx.untimers)
    assert fx.done == Status.SUCCESS


def test_pack_round_trip() -> None:
    assert effects.unpack(effects.pack("ry.x", b'{"a": 1}')) == ("ry.x", b'{"a": 1}')
    assert effects.parse_member("r|j~2|3|7") == ("r", "j~2", 3, ["7"])


def test_a_run_receives_only_the_secrets_its_pipeline_names() -> None:
    from services.dispatcher.runs import named_secrets

    stored = {"A": "1", "B_2": "2", "c-3": "3", "D": "4"}
    source = """
triggers: {pull_request: {secrets: true}}
jobs:
  j:
    steps:
      - run: echo ${{ secrets.A }} ${{ secrets . B_2 }}
      - run: echo ${{ secrets['c-3'] }} ${{ secrets.MISSING }}
"""
    assert named_secrets(source, stored) == {"A": "1", "B_2": "2", "c-3": "3"}
    assert named_secrets("run: echo hi", stored) == {}
    assert named_secrets("run: echo ${{ toJSON(secrets) }}", stored) == stored
    assert named_secrets("run: ${{ secrets[input.which] }}", stored) == stored


def test_a_lost_agent_is_not_asked_to_finish_its_attempt() -> None:
    e = _engine()
    e.start(0.0)
    e.apply(JobStarted(job="a", attempt=1, host={"agent": {"id": "ag1"}}, at=1.0))
    lost = effects.translate([FinishJob("a", 1, Status.AGENT_LOST)], e.plan, e.state, FACTS, 2.0)
    assert lost.outbox == []  # if it comes back it is told the attempt is not its own
    ended = effects.translate([FinishJob("a", 1, Status.INTERRUPTED)], e.plan, e.state, FACTS, 2.0)
    assert [i for i, _, _ in ended.outbox] == ["finish:r1|a|1"]  # it holds the workspace


def _heartbeat(jobs: list[str], checked: float | None) -> Heartbeat:
    facts = Metrics(
        os="linux",
        python="3",
        cpu_count=1,
        cpu_percent=0,
        load=(0, 0, 0),
        memory_total=1,
        memory_used=0,
        disk_total=1,
        disk_free=1,
    )
    return Heartbeat(
        agent="ag1", slots=2, free_slots=2, jobs=jobs, inbox_checked=checked, metrics=facts, at=0
    )


def test_heartbeats_take_back_only_what_the_agent_has_surely_received() -> None:
    assert fencing.reconcile_cutoff(_heartbeat([], None), 100.0) == 0.0  # not looked yet
    cutoff = fencing.reconcile_cutoff(_heartbeat([], 2.0), 100.0)
    assert cutoff == 100.0 - 2.0 - fencing.PUBLISH_SLACK


def test_a_late_report_is_stale_only_for_an_attempt_taken_from_its_agent() -> None:
    e = _engine()
    e.start(0.0)
    e.apply(JobStarted(job="a", attempt=1, host={"agent": {"id": "ag1"}}, at=1.0))
    e.apply(JobEnded(job="a", attempt=1, status=Status.AGENT_LOST, at=2.0))
    job = e.state.jobs["a"]
    assert job.attempt == 2 and fencing.taken_away(job, 1)
    assert not fencing.taken_away(job, 2)  # current and queued
    late = StepFinished(
        agent="ag1",
        run="r1",
        job="a",
        attempt=1,
        index=0,
        step="1",
        status=Status.SUCCESS,
        started_at=1.0,
        finished_at=3.0,
    )
    report = fencing.event_report(late, 4.0)
    assert fencing.report_field(report) == "a|1|ag1|step.finished|0"
    assert report["status"] == "success" and report["at"] == 4.0
