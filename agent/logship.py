"""A step's output lines → `LogBatch` messages: numbered from 1, flushed every 100 ms
or at 64 KiB, whichever comes first."""

from __future__ import annotations

import asyncio
import time

from agent.spool import Spool
from schemas import subjects
from schemas.messages import LogBatch, LogLine

FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 << 10


class StepLog:
    def __init__(
        self, spool: Spool, agent: str, run: str, job: str, attempt: int, step: str
    ) -> None:
        self.spool = spool
        self.agent, self.run, self.job, self.attempt, self.step = agent, run, job, attempt, step
        self.subject = subjects.agent_logs(agent, run, job, step)
        self.seq = 0
        self.lines: list[LogLine] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None

    def __call__(self, stream: str, text: str) -> None:
        self.seq += 1
        self.lines.append(LogLine(seq=self.seq, at=time.time(), stream=stream, text=text))
        self.size += len(text) + 24
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self, final: bool = False) -> None:
        """Send the lines so far; `final` marks the step's log complete (sent even empty)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.lines and not final:
            return
        batch = LogBatch(
            agent=self.agent,
            run=self.run,
            job=self.job,
            attempt=self.attempt,
            step=self.step,
            lines=self.lines,
            final=final,
            total=self.seq if final else None,
        )
        first = self.lines[0].seq if self.lines else self.seq + 1
        msg_id = f"log:{self.run}:{self.job}:{self.attempt}:{self.step}:{first}"
        self.spool.put(self.subject, batch.encode(), msg_id)
        self.lines, self.size = [], 0
