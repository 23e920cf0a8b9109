"""The agent process (`runyard agent start`): takes work from its inbox on NATS, hands
it to its jobs (agent/jobs.py), and tells the server it is alive (DESIGN.md §4, §6, §10).

Work is never lost with the connection: messages are acked only once what they
produced is stored (agent/jobs.py), and running steps never wait on NATS — their lines
and results go through the spool. A restarted agent reports each step its ledger
(agent/journal.py) says was running `interrupted`: it never runs a step twice in one
attempt.

Fencing: the attempt number on every message is the fencing token. Told that an
attempt is no longer its own (`job.revoked`, in answer to a late event or to a
heartbeat listing it), the agent kills that job's processes at once and reports
nothing more about it. Heartbeats list the attempts it holds, so the dispatcher frees
the slots of attempts a restarted agent no longer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from agent import git, metrics, process, workspaces
from agent.actions import ActionCache
from agent.attempt import job_key
from agent.config import AgentConfig
from agent.connection import Refused, admitted, connect
from agent.guard import Containment
from agent.jobs import Jobs
from agent.journal import Journal, Ledger
from agent.launcher import Launcher
from agent.runners import StepRunner
from agent.sandbox import Sandbox
from agent.spool import Spool
from runyard import nats_client
from runyard.nats_client import FETCH_WAIT
from runyard.settings import AgentSettings
from schemas import subjects
from schemas.messages import (
    AgentRemoved,
    Heartbeat,
    JobAssign,
    JobRevoked,
    StepAssign,
    decode_control,
    decode_inbox,
)

__all__ = ["Agent", "Refused", "admitted", "connect"]

log = logging.getLogger("runyard.agent")

HEARTBEAT = 5.0
IN_PROGRESS = 20.0  # well inside the inbox consumer's ack wait
SHUTDOWN = 30.0  # seconds for Ctrl-C: cancel steps (10 s grace), report, flush
FIRST_LOOK = 0.5  # seconds the first fetch after (re)connecting waits on an empty inbox


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        nc: Client,
        directory: Path,
        slots: int,
        sandbox: Sandbox | None = None,
        keep_workspaces: float = 0.0,
        settings: AgentSettings | None = None,
    ) -> None:
        """`settings` are the process's (default: read from its environment now, as
        the agent starts)."""
        settings = settings or AgentSettings.from_env()
        git.use(settings)
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.dir = directory
        self.slots = slots
        self.keep_workspaces = keep_workspaces
        self.spool = Spool(nc, directory / "spool")
        self.ledger = Ledger(directory / "state" / "started")
        self.contain = Containment(config.id, self.ledger)
        self.launcher = Launcher(sandbox)
        cache = directory / "cache"
        self.work = Jobs(
            agent=config.id,
            js=self.js,
            work=directory / "work",
            spool=self.spool,
            journal=Journal(directory / "state" / "done"),
            ledger=self.ledger,
            contain=self.contain,
            runner=StepRunner(
                ActionCache(cache / "actions", settings.actions_base, settings.actions_dir or ""),
                cache,
                sandbox,
            ),
            launcher=self.launcher,
            host=metrics.host_context(config.id, config.name),
            spawn=self._spawn,
            keep_workspaces=keep_workspaces,
        )
        self.removed = asyncio.Event()  # the server said this agent no longer exists
        self.tasks: set[asyncio.Task[None]] = set()
        self.beat = asyncio.Event()  # send a heartbeat now
        self.inbox_empty: tuple[float, int] | None = None  # (monotonic, connection) seen
        self.looking = -1  # the connection the fetch under way started on

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        started = [s for j in self.ledger.jobs.values() for s in j.steps.values()]
        self.contain.start(started)  # what a killed predecessor left running dies first
        self.launcher.start()  # in the agent's cgroup, from its main thread
        self.work.recover()
        self.spool.start()
        await self.nc.subscribe(subjects.agent_control(self.config.id), cb=self._on_control)
        loops = [
            asyncio.ensure_future(c)
            for c in (self._fetch(), self._heartbeats(), self._keep_in_progress(), self._sweep())
        ]
        log.info(
            "agent %s (%s) started with %d slots", self.config.name, self.config.id, self.slots
        )
        await stop.wait()
        log.info("stopping: cancelling running steps")
        for loop in loops[:1] + loops[2:]:
            loop.cancel()
        try:
            await asyncio.wait_for(self._shutdown(), SHUTDOWN)
        except TimeoutError:
            log.error("could not stop cleanly within %.0f s; leaving now", SHUTDOWN)
        loops[1].cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        self.work.close()
        self.launcher.stop()
        self.contain.stop()
        self.ledger.close()

    async def _shutdown(self) -> None:
        """Ctrl-C: cancel running steps, report them, send what is queued (not waiting
        for a server that is not there: it stays in the spool for the next start)."""
        jobs = list(self.work.jobs.values())
        for job in jobs:
            job.cancel.set()
        steps = [j.step for j in jobs if j.step]
        if steps:
            # a cancelled step ends within TERM's grace and KILL; one whose handling
            # waits on something else must not hold the stop up (its processes end
            # with the fork server when the agent exits)
            _, late = await asyncio.wait(steps, timeout=process.GRACE + 2)
            if late:
                log.warning("%d step(s) did not end after their cancel; leaving them", len(late))
        if self.nc.is_connected and not await self.spool.drained(10):
            log.warning("NATS did not take everything in time; it stays in the spool")
        await self.spool.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("agent task failed", exc_info=exc)

    async def _sweep(self) -> None:
        """Workspaces of jobs that are over (or that a killed agent left behind)."""
        while True:
            active = {
                (j.assign.run, workspaces.folder(j.assign.job, j.assign.attempt))
                for j in self.work.jobs.values()
            }
            try:
                await asyncio.to_thread(
                    workspaces.sweep, self.work.work, active, self.keep_workspaces
                )
            except Exception as exc:  # a full disk must not stop the agent
                log.warning("sweeping workspaces: %s", exc)
            await asyncio.sleep(min(workspaces.SWEEP_EVERY, max(self.keep_workspaces, 60.0)))

    # --- the inbox ------------------------------------------------------------------

    async def _fetch(self) -> None:
        while True:
            try:
                # the server made the consumer when it admitted this agent
                sub = await self.js.pull_subscribe_bind(
                    subjects.agent_inbox_consumer(self.config.id), subjects.INBOX_STREAM.name
                )
                break
            except Exception as exc:
                log.warning("waiting for NATS: %s", exc)
                await asyncio.sleep(1)
        # the inbox is not released at a stop: what it held is this agent's own work
        await nats_client.pull_loop(
            sub,
            self._dispatch,
            name="the inbox",
            log=log,
            wait=self._look,
            empty=self._inbox_was_empty,
            broken=self._inbox_unknown,
            release=False,
        )

    def _look(self) -> float:
        """How long the next fetch waits: FIRST_LOOK until the inbox was seen empty on
        this connection (so a heartbeat says so soon after a reconnect)."""
        self.looking = self._connection()
        return FETCH_WAIT if self.inbox_empty else FIRST_LOOK

    def _inbox_unknown(self) -> None:
        self.inbox_empty = None

    def _connection(self) -> int:
        """Which connection this is: the count of reconnects so far (-1: none now)."""
        return int(self.nc.stats["reconnects"]) if self.nc.is_connected else -1

    def _inbox_was_empty(self) -> None:
        """A fetch found nothing on one unbroken connection: everything sent to this
        inbox before it started has been received. The first time on a connection, a
        heartbeat says so at once (the dispatcher frees slots it no longer runs)."""
        connection = self.looking  # when the fetch started
        if connection < 0 or connection != self._connection():
            self.inbox_empty = None
            return
        first = self.inbox_empty is None or self.inbox_empty[1] != connection
        self.inbox_empty = (time.monotonic(), connection)
        if first:
            self.beat.set()

    def _dispatch(self, msg: Msg) -> None:
        try:
            work = decode_inbox(msg.data)
        except ValueError as exc:
            log.error("dropping an unreadable inbox message: %s", exc)
            self._spawn(msg.term())
            return
        if isinstance(work, JobAssign):
            self._spawn(self.work.assigned(work, msg))
        elif isinstance(work, StepAssign):
            self.work.step_assigned(work, msg)
        else:
            self._spawn(self.work.finish(work, msg))

    async def _on_control(self, msg: Msg) -> None:
        try:
            control = decode_control(msg.data)
        except ValueError as exc:
            log.error("unreadable control message: %s", exc)
            return
        if isinstance(control, AgentRemoved):
            log.error("this agent was removed on the server; stopping")
            self.removed.set()
            return
        key = job_key(control.run, control.job, control.attempt)
        if isinstance(control, JobRevoked):
            await self.work.revoked(key)
        elif (job := self.work.jobs.get(key)) is not None:
            job.cancel.set()

    async def _keep_in_progress(self) -> None:
        """Long steps: tell JetStream the step message is still being worked on."""
        while True:
            await asyncio.sleep(IN_PROGRESS)
            for job in list(self.work.jobs.values()):
                if job.step_msg is not None and job.step_index is not None:
                    with contextlib.suppress(Exception):
                        await job.step_msg.in_progress()

    # --- heartbeats -----------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Every HEARTBEAT seconds, and at once when `beat` is set."""
        while True:
            try:
                facts = await asyncio.to_thread(metrics.collect, self.dir)
                if self.nc.is_connected:
                    await self.nc.publish(
                        subjects.agent_heartbeat(self.config.id), self._heartbeat(facts)
                    )
            except Exception as exc:
                log.debug("heartbeat: %s", exc)
            self.beat.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.beat.wait(), HEARTBEAT)

    def _heartbeat(self, facts: Any) -> bytes:
        held = [k for k, j in self.work.jobs.items() if not j.revoked]
        checked = None
        if self.inbox_empty is not None and self.inbox_empty[1] == self._connection():
            checked = time.monotonic() - self.inbox_empty[0]
        return Heartbeat(
            agent=self.config.id,
            slots=self.slots,
            free_slots=max(self.slots - len(held), 0),
            jobs=held,
            inbox_checked=checked,
            events_seq=self.spool.stored.get(subjects.AGENT_STREAM.name),
            metrics=facts,
            at=time.time(),
        ).encode()
