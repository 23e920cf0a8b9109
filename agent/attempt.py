"""One job attempt as this agent holds it, from its claim to its end, and its key."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.msg import Msg

from agent.guard import StepGuard
from agent.launcher import JobSpawner
from schemas.messages import JobAssign


def job_key(run: str, job: str, attempt: int) -> str:
    return f"{run}|{job}|{attempt}"


def split_key(key: str) -> tuple[str, str, int]:
    run, job, attempt = key.split("|")
    return run, job, int(attempt)


@dataclass
class Job:
    assign: JobAssign
    workspace: Path
    setup_error: str | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    spawner: JobSpawner | None = None  # starts the job's steps in its sandbox
    step: asyncio.Task[None] | None = None
    step_index: int | None = None
    step_msg: Msg | None = None
    guard: StepGuard | None = None  # the running step's processes
    revoked: bool = False  # the attempt is no longer this agent's: report nothing
    prepared: asyncio.Task[None] | None = None  # workspace, spawner and code (None: ready)

    async def ready(self) -> None:
        """Once the job is prepared, or its preparing failed or was given up
        (`setup_error` says why); never raises."""
        if self.prepared is not None and not self.prepared.done():  # no turn of the loop
            await asyncio.wait({self.prepared})

    async def give_up_preparing(self) -> None:
        """The job is over: a checkout still under way (a stalled host, say) is stopped,
        not waited for."""
        if self.prepared is not None:
            self.prepared.cancel()
        await self.ready()
