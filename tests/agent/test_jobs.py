"""An agent's job and step handlers report, whatever breaks in the agent itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from agent import git, reaper
from agent.actions import ActionCache
from agent.guard import Containment
from agent.jobs import Jobs
from agent.journal import Journal, Ledger
from agent.launcher import Launcher
from agent.runners import StepRunner
from agent.spool import Spool
from schemas.messages import JobAssign, JobFinish, ResolvedStep, StepAssign
from schemas.status import Status

SHA = "0123456789abcdef0123456789abcdef01234567"


class Offline:
    """A NATS client that takes everything and sends nothing (the spool keeps it)."""

    is_connected = True

    def jetstream(self) -> Any:
        return None


class Delivery:
    def __init__(self) -> None:
        self.acks = 0

    async def ack(self) -> None:
        self.acks += 1


@contextlib.asynccontextmanager
async def made_jobs(tmp_path: Path, launcher: Launcher, work: Path) -> AsyncIterator[Jobs]:
    """A `Jobs` whose steps start from `launcher` in workspaces under `work`."""
    nc = cast(Client, Offline())
    ledger = Ledger(tmp_path / "state" / "started")
    launcher.start()
    made = Jobs(
        agent="a1",
        js=cast(JetStreamContext, None),
        work=work,
        spool=Spool(nc, tmp_path / "spool"),
        journal=Journal(tmp_path / "state" / "done"),
        ledger=ledger,
        contain=Containment("a1", ledger),
        runner=StepRunner(ActionCache(tmp_path / "actions"), tmp_path / "cache"),
        launcher=launcher,
        host={},
        spawn=asyncio.ensure_future,
    )
    try:
        yield made
    finally:
        made.close()
        launcher.stop()
        ledger.close()


@pytest.fixture
async def jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Jobs]:
    monkeypatch.setattr(reaper, "cgroup_base", lambda own, name: None)
    async with made_jobs(tmp_path, Launcher(None), tmp_path / "work") as made:
        yield made


def queued(jobs: Jobs, msg_id: str) -> dict[str, Any]:
    (found,) = [json.loads(m.data) for m in jobs.spool.memory if m.msg_id == msg_id]
    return cast(dict[str, Any], found)


def step_assign(run: str, script: str, job: str = "j") -> StepAssign:
    """Step 0 (`s`) of attempt 1 of `run`'s `job`, running `script`."""
    return StepAssign(run=run, job=job, step=ResolvedStep(index=0, id="s", name="s", script=script))


async def claimed(jobs: Jobs, run: str) -> None:
    assign = JobAssign(run=run, job="j", project="p", pipeline="ci")
    await jobs.assigned(assign, cast(Msg, Delivery()))


async def test_a_job_is_claimed_and_its_steps_fail_when_git_is_missing(
    jobs: Jobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no git here
    assign = JobAssign(
        run="r1", job="build", project="p", pipeline="ci", repository="https://x/y.git", sha=SHA
    )
    first = Delivery()
    await jobs.assigned(assign, cast(Msg, first))

    key = "r1|build|1"
    claim = queued(jobs, f"claim:{key}")
    assert claim["type"] == "job.claimed"
    assert jobs.spool.callbacks[f"claim:{key}"] == first.ack  # acked once it is stored
    again = Delivery()
    await jobs.assigned(assign, cast(Msg, again))  # redelivered: its claim is queued
    assert again.acks == 1

    jobs.step_assigned(step_assign("r1", "true", job="build"), cast(Msg, Delivery()))
    task = jobs.jobs[key].step
    assert task is not None
    await task
    finished = queued(jobs, f"sf:{key}|0")
    assert finished["status"] == "failure"
    assert "could not prepare" in finished["error"] and "git" in finished["error"]


async def test_a_step_the_agent_fails_to_run_is_still_reported(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    await claimed(jobs, "r2")

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(jobs.runner, "run", broken)
    jobs.step_assigned(step_assign("r2", "true"), cast(Msg, Delivery()))
    task = jobs.jobs["r2|j|1"].step
    assert task is not None
    await task
    finished = queued(jobs, "sf:r2|j|1|0")
    assert finished["status"] == "failure" and "disk on fire" in finished["error"]
    assert not jobs.ledger.jobs["r2|j|1"].steps  # not reported `interrupted` on restart


async def test_steps_run_through_the_jobs_spawner(jobs: Jobs) -> None:
    await claimed(jobs, "r3")
    script = 'echo "$PPID"; echo err >&2; exit 3'
    jobs.step_assigned(step_assign("r3", script), cast(Msg, Delivery()))
    job = jobs.jobs["r3|j|1"]
    assert job.step is not None
    await job.step
    finished = queued(jobs, "sf:r3|j|1|0")
    assert (finished["status"], finished["exit_code"]) == ("failure", 3)
    logs = [json.loads(m.data) for m in jobs.spool.memory if m.msg_id.startswith("log:r3")]
    lines = {line["stream"]: line["text"] for batch in logs for line in batch["lines"]}
    assert lines["err"] == "err"
    assert job.spawner is not None
    assert int(lines["out"]) == job.spawner.pid  # forked by the job's spawner, not the agent


async def test_the_claim_goes_out_before_the_job_is_prepared_and_steps_wait_for_it(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    go = asyncio.Event()
    prepare = jobs._prepare

    async def slow(job: Any) -> None:
        await go.wait()  # a checkout still under way
        await prepare(job)

    monkeypatch.setattr(jobs, "_prepare", slow)
    await claimed(jobs, "r4")
    assert queued(jobs, "claim:r4|j|1")["type"] == "job.claimed"  # not waiting for it
    jobs.step_assigned(step_assign("r4", "test -d .runyard"), cast(Msg, Delivery()))
    job = jobs.jobs["r4|j|1"]
    assert job.step is not None
    await asyncio.sleep(0.2)
    assert not job.step.done()  # the step waits for the job to be prepared
    go.set()
    await job.step
    assert queued(jobs, "sf:r4|j|1|0")["status"] == "success"


def checkout(monkeypatch: pytest.MonkeyPatch, gate: asyncio.Event | None = None) -> None:
    """git that writes a Makefile (once `gate` is set: a remote that is slow or stalls)."""

    async def resolve(url: str, ref: str | None) -> tuple[str, str]:
        return SHA, SHA

    async def fetch_checkout(url: str, ref: str, dest: Path) -> str:
        if gate is not None:
            await gate.wait()
        (dest / "Makefile").write_text("test:\n\ttrue\n")
        return ref

    monkeypatch.setattr(git, "resolve", resolve)
    monkeypatch.setattr(git, "fetch_checkout", fetch_checkout)


def with_code(run: str) -> JobAssign:
    return JobAssign(run=run, job="j", project="p", pipeline="ci", repository="https://x/y.git")


async def test_a_restarted_agent_keeps_a_checkout_it_made_and_makes_one_it_had_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reaper, "cgroup_base", lambda own, name: None)
    checkout(monkeypatch)
    stalled = asyncio.Event()
    async with made_jobs(tmp_path, Launcher(None), tmp_path / "work") as jobs:
        await jobs.assigned(with_code("r5"), cast(Msg, Delivery()))
        await jobs.jobs["r5|j|1"].ready()  # checked out; killed before any step ran
        checkout(monkeypatch, stalled)
        await jobs.assigned(with_code("r6"), cast(Msg, Delivery()))  # killed mid-checkout
        await jobs.jobs["r6|j|1"].give_up_preparing()  # (as the agent's end cancels it)
    checkout(monkeypatch)
    async with made_jobs(tmp_path, Launcher(None), tmp_path / "work") as jobs:
        jobs.recover()
        for run in ("r5", "r6"):
            jobs.step_assigned(step_assign(run, "test -f Makefile"), cast(Msg, Delivery()))
            step = jobs.jobs[f"{run}|j|1"].step
            assert step is not None
            await step
            assert queued(jobs, f"sf:{run}|j|1|0")["status"] == "success", run


@pytest.mark.parametrize("end", ["finish", "revoke"])
async def test_a_job_that_ends_during_a_stalled_checkout_ends_at_once(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    checkout(monkeypatch, asyncio.Event())  # never set
    await jobs.assigned(with_code("r7"), cast(Msg, Delivery()))
    jobs.step_assigned(step_assign("r7", "true"), cast(Msg, Delivery()))
    job = jobs.jobs["r7|j|1"]
    if end == "finish":
        done = JobFinish(run="r7", job="j", status=Status.CANCELLED)
        await asyncio.wait_for(jobs.finish(done, cast(Msg, Delivery())), 10)
        assert job.step is not None and job.step.done()
        assert queued(jobs, "sf:r7|j|1|0")["status"] in ("cancelled", "failure")
        assert queued(jobs, "done:r7|j|1")["type"] == "job.finished"
    else:
        await asyncio.wait_for(jobs.revoked("r7|j|1"), 10)
    assert job.spawner is None and not job.workspace.exists()


def with_first(run: str, script: str) -> JobAssign:
    """A job whose first step came with it (a secret in its environment and mask)."""
    step = ResolvedStep(
        index=0, id="s", name="s", script=script, env={"TOKEN": "s3cret"}, mask=["s3cret"]
    )
    return JobAssign(run=run, job="j", project="p", pipeline="ci", first=step)


async def test_a_first_step_that_came_with_the_job_runs_without_a_step_assign(
    jobs: Jobs,
) -> None:
    jobs.host = {"agent": {"id": "a1", "name": "one"}}
    delivery = Delivery()
    await jobs.assigned(with_first("r8", 'test "$TOKEN" = s3cret'), cast(Msg, delivery))
    assert queued(jobs, "claim:r8|j|1")["first"] is True  # the dispatcher sends no step 0
    job = jobs.jobs["r8|j|1"]
    assert job.step is not None and job.step_index == 0
    await job.step
    finished = queued(jobs, "sf:r8|j|1|0")
    assert finished["status"] == "success"
    assert finished["host"] == jobs.host  # it may reach the dispatcher before the claim
    # a step.assign for it anyway (sent before an upgrade, say) does not run it twice
    again = Delivery()
    jobs.step_assigned(step_assign("r8", "exit 1"), cast(Msg, again))
    await asyncio.sleep(0.1)
    assert again.acks == 1 and queued(jobs, "sf:r8|j|1|0")["status"] == "success"
    # the ledger keeps enough to say what happened, never what the step held
    ledger = (jobs.ledger.path).read_bytes()
    assert b"s3cret" not in ledger and b"TOKEN" not in ledger


async def test_a_restart_before_a_first_step_that_came_with_the_job_ends_the_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reaper, "cgroup_base", lambda own, name: None)
    async with made_jobs(tmp_path, Launcher(None), tmp_path / "work") as jobs:
        monkeypatch.setattr(jobs, "spawn", lambda coro: coro.close())  # killed at once
        await jobs.assigned(with_first("r9", "true"), cast(Msg, Delivery()))
    async with made_jobs(tmp_path, Launcher(None), tmp_path / "work") as jobs:
        jobs.recover()
        finished = queued(jobs, "sf:r9|j|1|0")
        assert finished["status"] == "interrupted" and "came with the job" in finished["error"]
        assert jobs.jobs["r9|j|1"].step is None  # not run: it is not known any more
