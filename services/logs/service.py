"""The log collector's async shell: a durable consumer on RY_LOGS; each batch is one
`APPEND_LOG` script call, which stores only lines past the last stored one and refuses
a batch that arrives before an earlier one (it is delivered again a moment later), so
redeliveries and several replicas store every line once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from runyard.settings import LogsSettings
from schemas import subjects
from schemas.messages import LogBatch
from services import bus
from services.store import runs
from services.store.connection import Redis
from services.store.logs import log_key, meta_key
from services.store.scripts import Scripts

log = logging.getLogger("runyard.logs")

WORKERS = 2
RETRY_GAP = 0.2  # seconds before a batch that came early is offered again
HOLDERS = 10_000  # attempts whose holder is remembered


class Collector:
    def __init__(self, nc: Client, r: Redis, settings: LogsSettings | None = None) -> None:
        settings = settings or LogsSettings()  # the defaults, unless the process's
        self.nc = nc
        self.js = nc.jetstream()
        self.r = r
        self.scripts = Scripts(r)
        self.holders: dict[tuple[str, str, int], str] = {}  # attempts checked, newest last
        self.cap = settings.cap  # bytes per step
        self.retention = settings.retention  # seconds
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await bus.ensure_streams(self.js)
        durable = subjects.LOG_COLLECTOR_CONSUMER
        await bus.ensure_consumer(self.js, subjects.LOGS_STREAM, durable, max_ack_pending=20_000)
        for _ in range(WORKERS):
            pull = bus.pull(self.js, subjects.LOGS_STREAM, durable, self._handle)
            self.tasks.append(asyncio.ensure_future(pull))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _handle(self, msg: Msg) -> None:
        try:
            batch = LogBatch.model_validate_json(msg.data)
        except ValueError as exc:
            log.error("dropping an unreadable log batch on %s: %s", msg.subject, exc)
            with contextlib.suppress(Exception):
                await msg.term()
            return
        if not await self._from_holder(msg.subject, batch):
            with contextlib.suppress(Exception):
                await msg.term()
            return
        try:
            added = await self.store(batch)
        except Exception:
            log.exception("storing a log batch; it will be delivered again")
            with contextlib.suppress(Exception):
                await msg.nak(delay=1)
            return
        with contextlib.suppress(Exception):
            if added < 0:
                await msg.nak(delay=RETRY_GAP)
            else:
                await msg.ack()

    async def _from_holder(self, subject: str, batch: LogBatch) -> bool:
        """Lines are stored only from the agent that holds (or held) the attempt, on its
        own subject (which nats-server lets only that agent publish on)."""
        where = (batch.run, batch.job, batch.attempt)
        expected = subjects.agent_logs(batch.agent, batch.run, batch.job, batch.step)
        if subject == expected and self.holders.get(where) == batch.agent:
            return True
        holder = await runs.ran_on(self.r, *where) if subject == expected else None
        if holder == batch.agent:
            self.holders[where] = holder
            while len(self.holders) > HOLDERS:
                self.holders.pop(next(iter(self.holders)))
            return True
        log.warning(
            "dropped log lines for %s on %s: the attempt is held by %s",
            "/".join(map(str, where)),
            subject,
            holder or "nobody",
        )
        return False

    async def store(self, batch: LogBatch) -> int:
        where = (batch.run, batch.job, batch.attempt, batch.step)
        lines = orjson.dumps([[x.seq, x.at, x.stream, x.text] for x in batch.lines])
        added = await self.scripts.append_log(
            keys=[log_key(*where), meta_key(*where)],
            args=[lines, self.cap, self.retention, batch.total or 0, int(batch.final)],
        )
        return int(added)
