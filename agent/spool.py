"""Everything the agent sends on JetStream, in order, each message once.

While NATS takes messages they go straight out from memory. When it does not (the
connection is down, or the backlog passed `memory_limit`), new messages are appended
to segment files under `<agent dir>/spool/` and sent, oldest first, after the
connection is back; a restarted agent sends what an earlier process left there. Every
message has a `Nats-Msg-Id`, so one re-sent after an uncertain publish is dropped by
the stream. `on_sent` runs once the stream has stored the message (used to ack the
work that produced it), in the process that queued it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from nats.aio.client import Client

log = logging.getLogger("runyard.agent.spool")

OnSent = Callable[[], Awaitable[None]]
SEGMENT_BYTES = 4 << 20
RETRY = 0.5


@dataclass(frozen=True)
class Outgoing:
    subject: str
    data: bytes
    msg_id: str


class Spool:
    def __init__(self, nc: Client, directory: Path, memory_limit: int = 8 << 20) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.memory: deque[Outgoing] = deque()
        self.memory_bytes = 0
        self.memory_limit = memory_limit
        self.callbacks: dict[str, OnSent] = {}
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.has_room = asyncio.Event()
        self._writing: tuple[Path, int] | None = None  # open segment and its size
        self._next_segment = max((int(p.stem) for p in self._segments()), default=0) + 1
        self._task: asyncio.Task[None] | None = None
        self._disk_backlog = bool(self._segments())  # kept up to date, not globbed per put
        self.stored: dict[str, int] = {}  # stream → sequence of the last message it stored

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.seg"))

    @property
    def on_disk(self) -> bool:
        return self._disk_backlog

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._sender())
        self.wake.set()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # unsent messages in memory are kept for the next start
        while self.memory:
            self._append(self.memory.popleft())

    def put(self, subject: str, data: bytes, msg_id: str, on_sent: OnSent | None = None) -> None:
        item = Outgoing(subject, data, msg_id)
        if on_sent is not None:
            self.callbacks[msg_id] = on_sent
        self.idle.clear()
        if self.nc.is_connected and not self.on_disk and self.memory_bytes < self.memory_limit:
            self.memory.append(item)
            self.memory_bytes += len(data)
        else:
            self._append(item)
        self.wake.set()

    async def room(self) -> None:
        """Backpressure for producers: while connected, wait until the backlog in memory
        is under the limit (while disconnected, messages go to disk instead)."""
        while self.nc.is_connected and self.memory_bytes >= self.memory_limit:
            self.has_room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.has_room.wait(), 1.0)

    async def drained(self, timeout: float) -> bool:
        """Wait until everything queued so far is sent; False on timeout."""
        if not self.memory and not self.on_disk:
            return True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- disk -----------------------------------------------------------------------

    def _append(self, item: Outgoing) -> None:
        if self._writing is None or self._writing[1] >= SEGMENT_BYTES:
            self._writing = (self.dir / f"{self._next_segment:012d}.seg", 0)
            self._next_segment += 1
        self._disk_backlog = True
        path, size = self._writing
        line = orjson.dumps({"s": item.subject, "i": item.msg_id, "d": item.data.decode()})
        with path.open("ab") as out:
            out.write(line + b"\n")
        self._writing = (path, size + len(line) + 1)

    def _take_segment(self) -> tuple[Path, list[Outgoing]] | None:
        segments = self._segments()
        if not segments:
            return None
        oldest = segments[0]
        if self._writing and self._writing[0] == oldest:
            self._writing = None  # later messages start a new segment
        items = []
        for raw in oldest.read_bytes().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                value = orjson.loads(raw)
                items.append(Outgoing(value["s"], value["d"].encode(), value["i"]))
        return oldest, items

    # --- sending --------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            if self.memory:
                item = self.memory[0]
                await self._send(item)
                self.memory.popleft()
                self.memory_bytes -= len(item.data)
                if self.memory_bytes < self.memory_limit:
                    self.has_room.set()
                continue
            taken = self._take_segment()
            if taken is not None:
                path, items = taken
                for item in items:
                    await self._send(item)
                path.unlink(missing_ok=True)
                continue
            self._disk_backlog = False
            self.idle.set()
            self.wake.clear()
            await self.wake.wait()

    async def _send(self, item: Outgoing) -> None:
        while True:
            try:
                ack = await self.js.publish(
                    item.subject, item.data, headers={"Nats-Msg-Id": item.msg_id}, timeout=5
                )
                self.stored[ack.stream] = max(ack.seq, self.stored.get(ack.stream, 0))
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not connected, or no answer: try again
                log.debug("publish %s: %s; retrying", item.subject, exc)
                await asyncio.sleep(RETRY)
        callback = self.callbacks.pop(item.msg_id, None)
        if callback is not None:
            try:
                await callback()
            except Exception as exc:
                log.debug("after sending %s: %s", item.msg_id, exc)
