"""Simulated agents for bench/scale.py: many per process, each with its own NATS
connection (the agent's own `connect`, so admitted through the auth callout with its
own identity), its own inbox consumer and heartbeats every 5 s.

    python bench/fleet.py AGENTS.json OUT.json

AGENTS.json lists agent files' contents (`AgentConfig` fields). The process prints
`ready` once every agent is connected and fetching; on SIGTERM it writes what each
agent received to OUT.json (`[type, run, job, index, time]`) and exits. Work is done at
once: a `job.assign` is claimed, a `step.assign` finished with success, a `job.finish`
answered — so what the bench measures is the server, not the steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from nats.aio.msg import Msg
from nats.js import JetStreamContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import metrics
from agent.config import AgentConfig
from agent.connection import connect
from schemas import subjects
from schemas.messages import (
    Heartbeat,
    JobAssign,
    JobClaimed,
    JobFinished,
    Metrics,
    StepAssign,
    StepFinished,
    decode_inbox,
)
from schemas.status import Status

HEARTBEAT = 5.0  # as agent/daemon.py
FETCH_WAIT = 5.0
CONNECTING = 20  # admissions in flight per process

Received = list[tuple[str, str, str, int, float, float]]  # …, received at, stored at


class SimAgent:
    def __init__(self, config: AgentConfig, received: Received, facts: Metrics) -> None:
        self.config = config
        self.received = received
        self.held: set[str] = set()  # run|job|attempt
        self.host = metrics.host_context(config.id, config.name)  # the dispatcher reads it
        self.facts = facts

    async def start(self) -> list[asyncio.Task[None]]:
        self.nc = await connect(self.config, self.config.nats_url)
        self.js = self.nc.jetstream()
        sub = await self.js.pull_subscribe_bind(
            subjects.agent_inbox_consumer(self.config.id), subjects.INBOX_STREAM.name
        )
        return [
            asyncio.ensure_future(self._fetch(sub)),
            asyncio.ensure_future(self._heartbeats()),
        ]

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await sub.fetch(1, timeout=FETCH_WAIT)
            except TimeoutError:
                continue
            for msg in msgs:
                await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        now = time.time()
        work = decode_inbox(msg.data)
        key = subjects.attempt_member(work.run, work.job, work.attempt)
        index = work.step.index if isinstance(work, StepAssign) else -1
        stored = msg.metadata.timestamp.timestamp()  # when JetStream took it in
        self.received.append((work.type, work.run, work.job, index, now, stored))
        ident = {"agent": self.config.id, "run": work.run, "job": work.job}
        if isinstance(work, JobAssign):
            self.held.add(key)
            event: JobClaimed | StepFinished | JobFinished = JobClaimed(
                **ident, attempt=work.attempt, workspace="/nowhere", host=self.host, at=now
            )
            msg_id = f"claim:{key}"
        elif isinstance(work, StepAssign):
            event = StepFinished(
                **ident,
                attempt=work.attempt,
                index=work.step.index,
                step=work.step.id,
                status=Status.SUCCESS,
                exit_code=0,
                started_at=now,
                finished_at=now,
            )
            msg_id = f"sf:{key}|{work.step.index}"
        else:
            self.held.discard(key)
            event = JobFinished(**ident, attempt=work.attempt, status=work.status, at=now)
            msg_id = f"done:{key}"
        subject = subjects.agent_events(self.config.id)
        await self.js.publish(subject, event.encode(), headers={"Nats-Msg-Id": msg_id})
        await msg.ack()

    async def _heartbeats(self) -> None:
        await asyncio.sleep(random.uniform(0, HEARTBEAT))  # spread over the interval
        while True:
            beat = Heartbeat(
                agent=self.config.id,
                slots=1,
                free_slots=1 - len(self.held),
                jobs=sorted(self.held),
                metrics=self.facts,
                at=time.time(),
            )
            with contextlib.suppress(Exception):
                await self.nc.publish(subjects.agent_heartbeat(self.config.id), beat.encode())
            await asyncio.sleep(HEARTBEAT)


def write_configs(configs: list[AgentConfig], path: Path) -> None:
    path.write_text(json.dumps([asdict(c) for c in configs]))


async def main(configs: list[AgentConfig], out: Path) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    received: Received = []
    gate = asyncio.Semaphore(CONNECTING)
    facts = metrics.collect(Path.cwd())  # this machine's, once for every agent

    async def started(config: AgentConfig) -> list[asyncio.Task[None]]:
        async with gate:
            return await SimAgent(config, received, facts).start()

    tasks = await asyncio.gather(*(started(c) for c in configs))
    print("ready", flush=True)
    await stop.wait()
    out.write_text(json.dumps(received))
    for task in (t for ts in tasks for t in ts):
        task.cancel()


if __name__ == "__main__":
    agents = [AgentConfig(**a) for a in json.loads(Path(sys.argv[1]).read_text())]
    asyncio.run(main(agents, Path(sys.argv[2])))
