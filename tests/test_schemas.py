"""Messages round-trip through their encoding; names come from one module."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from schemas import subjects
from schemas.action import Action
from schemas.messages import (
    Cancel,
    Heartbeat,
    JobAssign,
    JobClaimed,
    JobFinished,
    Metrics,
    ResolvedStep,
    StepAssign,
    StepFinished,
    TriggerEvent,
    decode_agent_event,
    decode_inbox,
)
from schemas.pipeline import ActionRef, Pipeline, Step
from schemas.status import Status


def test_inbox_messages_round_trip() -> None:
    job = JobAssign(run="r1", job="train", project="p", pipeline="Train")
    resolved = ResolvedStep(index=0, id="add", name="Add", script="echo", mask=["s3cret"])
    step = StepAssign(run="r1", job="train", step=resolved)
    action = ActionRef(name="org/add", tag="v1")
    action_step = StepAssign(
        run="r1", job="train", step=ResolvedStep(index=1, id="a", name="A", action=action)
    )
    assert decode_inbox(job.encode()) == job
    assert decode_inbox(step.encode()) == step
    assert decode_inbox(action_step.encode()) == action_step
    # the action is a plain mapping on the wire
    assert orjson.loads(action_step.encode())["step"]["action"] == {
        "name": "org/add",
        "tag": "v1",
        "git": None,
    }


def test_agent_events_round_trip() -> None:
    events = [
        JobClaimed(agent="a", run="r", job="j", workspace="/w", at=1.0),
        StepFinished(
            agent="a",
            run="r",
            job="j",
            index=0,
            step="s",
            status=Status.SUCCESS,
            exit_code=0,
            outputs={"sum": 30},
            started_at=1.0,
            finished_at=2.0,
        ),
        JobFinished(agent="a", run="r", job="j", status=Status.FAILURE, at=3.0),
    ]
    for event in events:
        assert decode_agent_event(event.encode()) == event


def test_every_message_carries_version_and_type() -> None:
    metrics = Metrics(
        os="Linux",
        python="3.11",
        cpu_count=2,
        cpu_percent=1.0,
        load=(0, 0, 0),
        memory_total=1,
        memory_used=1,
        disk_total=1,
        disk_free=1,
    )
    for message in [
        TriggerEvent(id="e", kind="push", project="p", created_at=0.0),
        Heartbeat(agent="a", slots=2, free_slots=1, metrics=metrics, at=0.0),
        Cancel(run="r", job="j"),
    ]:
        data = orjson.loads(message.encode())
        assert data["v"] == 1 and data["type"]


def test_newer_fields_are_ignored() -> None:
    data = Cancel(run="r", job="j").model_dump() | {"from_the_future": True}
    assert Cancel.model_validate(data) == Cancel(run="r", job="j")


def test_unknown_message_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        decode_inbox(b'{"v": 1, "type": "nope"}')


def test_subjects() -> None:
    assert subjects.events("push", "vision") == "ry.events.push.vision"
    assert subjects.agent_logs("a1", "r", "j", "s") == "ry.agent.a1.logs.r.j.s"
    assert subjects.key("run", "r1") == "ry:run:r1"
    assert {s.name for s in subjects.STREAMS} == {"RY_EVENTS", "RY_INBOX", "RY_AGENT", "RY_LOGS"}


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("datatorch/add@v1", ActionRef(name="datatorch/add", tag="v1")),
        ("org/name", ActionRef(name="org/name")),
        ("./actions/local", ActionRef(name="./actions/local")),
        (
            {"name": "a/b", "tag": "v2", "git": "file:///x"},
            ActionRef(name="a/b", tag="v2", git="file:///x"),
        ),
    ],
)
def test_action_reference_forms(text: object, ref: ActionRef) -> None:
    assert Step.model_validate({"action": text}).action == ref


def test_shorthands() -> None:
    pipeline = Pipeline.model_validate(
        {
            "name": "x",
            "concurrency": "group-a",
            "triggers": {"manual": True},
            "jobs": {"a": {"needs": [], "runs-on": "gpu", "retry": 3, "steps": [{"run": "x"}]}},
        }
    )
    assert pipeline.concurrency is not None and pipeline.concurrency.group == "group-a"
    assert pipeline.jobs["a"].runs_on == ["gpu"]
    assert pipeline.jobs["a"].retry.max == 3
    assert pipeline.triggers.manual is not None


def test_default_trigger_is_manual() -> None:
    pipeline = Pipeline.model_validate({"name": "x", "jobs": {"a": {"steps": [{"run": "x"}]}}})
    assert pipeline.triggers.manual is not None


def test_action_file_ignores_unknown_keys() -> None:
    action = Action.model_validate(
        {
            "name": "Add",
            "branding": {"icon": "plus"},
            "inputs": {"a": {"type": "integer", "required": True}},
            "outputs": {"sum": {"type": "integer"}},
            "runs": {"using": "python", "main": "add.py"},
        }
    )
    assert action.inputs["a"].required and action.runs.main == "add.py"


def test_json_schema_command() -> None:
    import json

    from click.testing import CliRunner

    from runyard.cli import cli

    for kind in ("pipeline", "action"):
        result = CliRunner().invoke(cli, ["schema", kind])
        assert result.exit_code == 0
        schema = json.loads(result.stdout)
        assert schema["$schema"].startswith("https://json-schema.org/")
    pipeline = json.loads(CliRunner().invoke(cli, ["schema", "pipeline"]).stdout)
    job = pipeline["$defs"]["Job"]["properties"]
    assert "runs-on" in job and "runs_on" not in job
    assert {"type": "string"} in pipeline["$defs"]["Step"]["properties"]["action"]["anyOf"]
