"""The dispatcher's async shell: NATS consumers, the heartbeat listener and a ticker
around the pure parts (engine, effects, placement).

Every change to a run is `change()`: load (or reuse) the run, apply one engine entry
point, commit the new state and its effects in one compare-and-set script, then send
what the commit recorded. A replica that loses the race reloads and tries again, so
several dispatchers may share the durable consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from runyard.engine.contexts import form_inputs
from runyard.engine.events import Command, JobEnded, JobStarted, RunCancelled, StepDone
from runyard.engine.expressions import ExpressionError, render
from runyard.engine.machine import Engine, initial_state
from runyard.engine.text import to_text
from schemas import subjects
from schemas.messages import (
    Heartbeat,
    JobClaimed,
    JobFinish,
    JobFinished,
    JobRevoked,
    RunCancel,
    RunChanged,
    StepFinished,
    TriggerEvent,
    decode_agent_event,
    decode_event,
)
from schemas.pipeline import Pipeline
from schemas.status import Status
from services import bus
from services.dispatcher import effects, fencing, matching, placement
from services.dispatcher.admission import Admission, Settings
from services.dispatcher.runs import BadPipeline, LiveRun, live_run, plan_for
from services.store import crypto, orgs, records
from services.store import runs as store
from services.store.connection import Redis, strs
from services.store.scripts import Scripts

log = logging.getLogger("runyard.dispatcher")

WORKERS = 4  # pull subscribers of agent events in one process
TICK = 0.25  # seconds between timer checks
SWEEP = 2.0  # seconds between outbox / group / queue sweeps
CACHE_SIZE = 2000  # runs kept loaded
RUN_ARTIFACT_LIMIT = 5 << 30  # bytes of artifacts per run

Apply = Callable[[Engine, float], list[Command]]


class Dispatcher:
    def __init__(self, nc: Client, r: Redis) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.r = r
        self.scripts = Scripts(r)
        self.cache: OrderedDict[str, LiveRun] = OrderedDict()
        self.locks: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, coroutines using it
        self.kick = asyncio.Event()
        self.placing = asyncio.Lock()
        self.seen_outbox: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        settings = Settings.from_env()
        self.admission = Admission(settings, self.js, r) if settings else None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await bus.ensure_streams(self.js)
        events = (subjects.EVENTS_STREAM, subjects.DISPATCHER_EVENTS_CONSUMER)
        results = (subjects.AGENT_STREAM, subjects.DISPATCHER_AGENT_CONSUMER)
        for stream, durable in (events, results):
            await bus.ensure_consumer(self.js, stream, durable, max_ack_pending=10_000)
        # one worker takes trigger events, so runs are numbered and queued in their order
        self._spawn(bus.pull(self.js, *events, partial(self._acked, self.on_event)))
        for _ in range(WORKERS):
            self._spawn(bus.pull(self.js, *results, partial(self._acked, self.on_agent_event)))
        await self.nc.subscribe(
            subjects.HEARTBEATS_ALL, queue=subjects.DISPATCHER_QUEUE, cb=self.on_heartbeat
        )
        self._spawn(self._ticker())
        self._spawn(self._placer())
        self._spawn(self._reseal_secrets())
        if self.admission is not None:
            await self.admission.start(self.nc)
        else:
            log.warning("no RUNYARD_NATS_AUTH_URL: this dispatcher admits no agents")

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.admission is not None:
            await self.admission.stop()

    async def _reseal_secrets(self) -> None:
        """Secrets stored in plain text by an earlier version, or under a key being
        rotated out, are sealed under the current key once at start (docs/security.md)."""
        try:
            done = await records.reseal_all(self.r)
        except crypto.KeyMissing as exc:
            log.error("stored secrets were not checked: %s", exc)
            return
        if done.resealed or done.unreadable:
            log.warning(
                "secrets at rest: %d sealed again under RUNYARD_SECRET_KEY; %d no key opens%s",
                done.resealed,
                len(done.unreadable),
                f" ({', '.join(done.unreadable)})" if done.unreadable else "",
            )

    def _spawn(self, coro: Awaitable[None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def _acked(self, handle: Callable[[Msg], Awaitable[None]], msg: Msg) -> None:
        """Ack a message once handled; on an error, offer it again a moment later."""
        try:
            await handle(msg)
        except Exception:
            log.exception("handling a message on %s; it will be delivered again", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1)
            return
        with contextlib.suppress(Exception):
            await msg.ack()

    # --- changing a run -------------------------------------------------------------

    async def _load(self, run_id: str) -> LiveRun | None:
        live = self.cache.get(run_id)
        if live is not None:
            self.cache.move_to_end(run_id)
            return live
        stored = await store.load_run(self.r, run_id)
        if stored is None:
            return None
        live = live_run(stored, await records.secrets_of(self.r, stored.fields["project"]))
        self.cache[run_id] = live
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return live

    async def change(
        self,
        run_id: str,
        apply: Apply,
        extra: Callable[[LiveRun, effects.Effects, float], None] | None = None,
    ) -> LiveRun | None:
        """Apply one engine entry point to a run and commit it; None if no such run.

        Changes to one run are serialised in this process (they share the cached
        engine); replicas are kept apart by the version compare-and-set."""
        lock, users = self.locks.get(run_id, (asyncio.Lock(), 0))
        self.locks[run_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._change(run_id, apply, extra)
        except BaseException:
            self.cache.pop(run_id, None)  # possibly changed half way: load it afresh
            raise
        finally:
            lock, users = self.locks[run_id]
            if users == 1:
                del self.locks[run_id]
            else:
                self.locks[run_id] = (lock, users - 1)

    async def _change(
        self,
        run_id: str,
        apply: Apply,
        extra: Callable[[LiveRun, effects.Effects, float], None] | None,
    ) -> LiveRun | None:
        for _ in range(20):
            live = await self._load(run_id)
            if live is None:
                return None
            now = time.time()
            commands = apply(live.engine, now)
            fx = effects.translate(commands, live.engine.plan, live.engine.state, live.facts, now)
            if extra:
                extra(live, fx, now)
            state_json = live.engine.state.model_dump_json()
            if state_json == live.state_json and not fx.outbox and not fx.enqueue:
                # nothing to do, unless another replica moved the run on since it was cached
                stored = await self.r.hget(store.run_key(run_id), "ver")
                if stored is not None and int(stored) == live.version:
                    return live
                self.cache.pop(run_id, None)
                continue
            state = live.engine.state
            summary = {
                "status": str(state.status),
                "started_at": str(state.started_at or ""),
                "finished_at": str(state.finished_at or ""),
            }
            ok = await self.scripts.commit(
                keys=[
                    store.run_key(run_id),
                    store.OUTBOX,
                    store.QUEUE,
                    store.QUEUE_INFO,
                    store.TIMERS,
                ],
                args=[str(live.version), state_json, store.dumps(summary), fx.to_json()],
            )
            if ok:
                live.version += 1
                live.state_json = state_json
                await self._perform(live, fx, now)
                return live
            self.cache.pop(run_id, None)  # another replica changed it: reload and retry
        raise RuntimeError(f"run {run_id}: could not commit a change after 20 tries")

    async def _perform(self, live: LiveRun, fx: effects.Effects, now: float) -> None:
        await self._send_outbox([(i, s, d) for i, s, d in fx.outbox])
        for subject, data in fx.control:
            await self.nc.publish(subject, data)
        status = live.engine.state.status
        await self.nc.publish(
            subjects.run_changed(live.facts.id),
            RunChanged(run=live.facts.id, status=status, at=now).encode(),
        )
        if fx.enqueue:
            await self.place_queued()
        if fx.done is not None:
            await self._group_advance_for(live.facts.id)

    async def _send_outbox(self, entries: list[tuple[str, str, bytes]]) -> None:
        sent = []
        for msg_id, subject, data in entries:
            try:
                await self.js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            except Exception as exc:  # left in the outbox; the sweep sends it again
                log.warning("publish %s: %s", subject, exc)
                continue
            sent.append(msg_id)
        if sent:
            await self.r.hdel(store.OUTBOX, *sent)

    # --- trigger events and cancels -------------------------------------------------

    async def on_event(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except ValueError as exc:
            log.error("dropping an unreadable event on %s: %s", msg.subject, exc)
            return
        if isinstance(event, RunCancel):
            await self.change(event.run, lambda e, now: e.apply(RunCancelled(at=now)))
            return
        for name in await self._pipelines_for(event):
            await self._create_run(event, name)

    async def _pipelines_for(self, event: TriggerEvent) -> list[str]:
        if event.pipeline is not None and event.kind != "webhook":
            return [event.pipeline]
        names = []
        for record in await records.list_pipelines(self.r, event.project):
            try:
                pipeline, _ = plan_for(record.source, record.format)
            except BadPipeline:
                continue
            if matching.starts(pipeline, event):
                names.append(record.name)
        return names

    async def _create_run(self, event: TriggerEvent, name: str) -> None:
        try:
            record = await records.get_pipeline(self.r, event.project, name)
            pipeline, plan = plan_for(record.source, record.format)
        except (records.NotFound, BadPipeline) as exc:
            log.error("event %s: %s", event.id, exc)
            return
        run_id = store.run_id_for(event.id, event.project, name)
        event_dict = event.model_dump(mode="json")
        inputs = form_inputs(pipeline, event.inputs)
        group, cancel_running = _group(pipeline, event_dict, inputs)
        fields = {
            "project": event.project,
            "pipeline": name,
            "version": str(record.version),
            "source": record.source,
            "format": record.format,
            "event": store.dumps(event_dict),
            "inputs": store.dumps(inputs),
            "trigger": event.kind,
            "actor": event.actor or "",
            "created_at": str(time.time()),
            "status": str(Status.QUEUED),
            "group": group or "",
        }
        state = initial_state(plan, run_id).model_dump_json()
        number = await store.create_run(self.r, self.scripts, run_id, fields, state)
        if number:
            log.info("run %s: %s #%d", run_id, name, number)
        if group is None:
            await self.change(run_id, lambda e, now: e.start(now))
            return
        gkey = store.group_key(event.project, group)
        await self.r.zadd(gkey, {run_id: event.created_at}, nx=True)
        await self.r.sadd(store.GROUPS, gkey)
        if cancel_running:
            for other in strs(await self.r.zrange(gkey, 0, -1)):
                if other != run_id:
                    await self.change(other, lambda e, now: e.apply(RunCancelled(at=now)))
        await self._group_advance(gkey)

    async def _group_advance_for(self, run_id: str) -> None:
        project, group = await self.r.hmget(store.run_key(run_id), ["project", "group"])
        if project and group:
            await self._group_advance(store.group_key(str(project), str(group)))

    async def _group_advance(self, gkey: str) -> None:
        """Start the oldest run of a concurrency group once every older one has ended."""
        for run_id in strs(await self.r.zrange(gkey, 0, -1)):
            status = await self.r.hget(store.run_key(run_id), "status")
            if status is None or Status(str(status)).final:
                await self.r.zrem(gkey, run_id)
                continue
            if status == Status.QUEUED:
                await self.change(run_id, lambda e, now: e.start(now))
            return
        await self.r.srem(store.GROUPS, gkey)

    # --- agent events ---------------------------------------------------------------

    async def on_agent_event(self, msg: Msg) -> None:
        try:
            event = decode_agent_event(msg.data)
        except ValueError as exc:
            log.error("dropping an unreadable agent event on %s: %s", msg.subject, exc)
            return
        if not await self._from_holder(msg.subject, event):
            return
        if isinstance(event, JobClaimed):
            await self._claimed(event)
        elif isinstance(event, StepFinished):
            await self.change(event.run, lambda e, now: e.apply(_step_done(event)))
        else:
            await self._job_finished(event)

    async def _from_holder(
        self, subject: str, event: JobClaimed | StepFinished | JobFinished
    ) -> bool:
        """Only the agent that holds this attempt may report on it. nats-server lets an
        agent publish on its own subject alone, so the subject names the sender."""
        sender = _subject_agent(subject)
        m = effects.member(event.run, event.job, event.attempt)
        holder = await self.r.hget(store.PLACEMENTS, m)
        if sender == event.agent and holder is not None and str(holder) == sender:
            return True
        log.warning(
            "dropped %s for %s from agent %s: the attempt is held by %s",
            event.type,
            m,
            sender,
            holder or "nobody",
        )
        if sender and sender == event.agent:  # a stale holder: it must stop that job
            await self._revoke(sender, event.run, event.job, event.attempt)
            if holder is not None or await self._taken_away(event.run, event.job, event.attempt):
                report = fencing.event_report(event, time.time())
                await store.record_stale(self.r, event.run, fencing.report_field(report), report)
        return False

    async def _revoke(self, agent: str, run: str, job: str, attempt: int) -> None:
        revoked = JobRevoked(run=run, job=job, attempt=attempt)
        await self.nc.publish(subjects.agent_control(agent), revoked.encode())

    async def _taken_away(self, run: str, job: str, attempt: int) -> bool:
        live = await self._load(run)
        state = live.engine.state.jobs.get(job) if live is not None else None
        return state is not None and fencing.taken_away(state, attempt)

    async def _claimed(self, event: JobClaimed) -> None:
        stale = True

        def apply(engine: Engine, now: float) -> list[Command]:
            nonlocal stale
            job = engine.state.jobs.get(event.job)
            stale = job is None or job.attempt != event.attempt or job.status.final
            started = JobStarted(job=event.job, attempt=event.attempt, host=event.host, at=event.at)
            return engine.apply(started)

        def timer(live: LiveRun, fx: effects.Effects, now: float) -> None:
            plan = live.engine.plan.jobs.get(event.job)
            if not stale and plan is not None and plan.spec.timeout:
                effects.job_started(
                    fx, live.facts, event.job, event.attempt, plan.spec.timeout * 60, now
                )

        live = await self.change(event.run, apply, timer)
        if live is None or stale:
            # a claim for an attempt that is over (cancelled while placed): let it go
            finish = JobFinish(
                run=event.run, job=event.job, attempt=event.attempt, status=Status.CANCELLED
            )
            msg_id = "finish:" + effects.member(event.run, event.job, event.attempt)
            await self._send_outbox([(msg_id, subjects.agent_inbox(event.agent), finish.encode())])

    async def _job_finished(self, event: JobFinished) -> None:
        m = effects.member(event.run, event.job, event.attempt)
        await self._release(event.agent, m)
        self.kick.set()
        await self._record_outputs(event)

    async def _record_outputs(self, event: JobFinished) -> None:
        """Artifacts, test summary and their problems, kept with the run by job."""
        prefix = f"{event.run}/{event.job}/"
        bucket = subjects.agent_artifacts_bucket(event.agent)
        files = [f for f in event.artifacts if f.object.startswith(prefix)]
        errors = list(event.errors)
        size = sum(f.size for f in files)
        if size:
            total = await self.r.hincrby(store.run_key(event.run), "artifact_bytes", size)
            if total > RUN_ARTIFACT_LIMIT:
                await self.r.hincrby(store.run_key(event.run), "artifact_bytes", -size)
                objects = await self.js.object_store(bucket)
                for f in files:
                    with contextlib.suppress(Exception):
                        await objects.delete(f.object)
                errors.append(
                    f"artifacts of {event.job} ({size} bytes) would take the run over "
                    f"its limit of {RUN_ARTIFACT_LIMIT} bytes; deleted"
                )
                files = []
        record = {
            "attempt": event.attempt,
            "artifacts": [{**f.model_dump(), "bucket": bucket} for f in files],
            "tests": event.tests.model_dump() if event.tests else None,
            "errors": errors,
        }
        await self.r.hset(store.run_key(event.run), f"finished:{event.job}", store.dumps(record))
        status = await self.r.hget(store.run_key(event.run), "status")
        changed = RunChanged(run=event.run, status=Status(str(status or "running")), at=time.time())
        await self.nc.publish(subjects.run_changed(event.run), changed.encode())

    async def _release(self, agent: str, m: str) -> bool:
        released = await self.scripts.release(
            keys=[
                store.PLACEMENTS,
                records.agent_key(agent),
                records.agent_key(agent, "jobs"),
                store.PLACED,
            ],
            args=[m, agent],
        )
        return bool(released)

    # --- heartbeats, placement ------------------------------------------------------

    async def on_heartbeat(self, msg: Msg) -> None:
        freed = False
        try:
            hb = Heartbeat.model_validate_json(msg.data)
            if hb.agent != _subject_agent(msg.subject):
                log.warning("dropped a heartbeat for %s sent on %s", hb.agent, msg.subject)
                return
            fields = {
                "last_seen": str(time.time()),
                "slots": str(hb.slots),
                "metrics": hb.metrics.model_dump_json(),
                "running": store.dumps(hb.jobs),
            }
            history = store.dumps(
                {
                    "at": hb.at,
                    "cpu": hb.metrics.cpu_percent,
                    "mem": hb.metrics.memory_used / max(hb.metrics.memory_total, 1) * 100,
                }
            )
            came = await self.scripts.heartbeat(
                keys=[
                    records.agent_key(hb.agent),
                    store.ONLINE,
                    records.agent_key(hb.agent, "metrics"),
                ],
                args=[
                    store.dumps(fields),
                    time.time(),
                    records.AGENT_TTL,
                    history,
                    records.METRIC_HISTORY,
                    hb.agent,
                ],
            )
            if came != -1:
                freed = await self._reconcile(hb)
        except Exception as exc:
            log.warning("heartbeat on %s: %s", msg.subject, exc)
            return
        if came == -1 and self.admission is not None:  # removed while connected
            await self.admission.revoke(hb.agent)
        if came == 1 or (came == 0 and hb.free_slots > 0) or freed:
            self.kick.set()

    async def _reconcile(self, hb: Heartbeat) -> bool:
        """Trust the agent's list of the attempts it holds: placements it no longer
        runs end `interrupted` (their slots are free at once), and attempts it runs but
        no longer holds are revoked. True when a slot was freed."""
        now = time.time()
        keys = [
            store.PLACEMENTS,
            records.agent_key(hb.agent),
            records.agent_key(hb.agent, "jobs"),
            store.PLACED,
        ]
        reported, cutoff = store.dumps(hb.jobs), fencing.reconcile_cutoff(hb, now)
        gone, stale = await self.scripts.reconcile(keys=keys, args=[hb.agent, reported, cutoff, 0])
        if gone:  # take them back once every event the agent had sent is handled
            gone = []
            if await self._caught_up(hb.events_seq):
                take: list[str | float] = [hb.agent, reported, cutoff, 1]
                gone, stale = await self.scripts.reconcile(keys=keys, args=take)
        for m in strs(gone):
            run, job, attempt, _ = effects.parse_member(m)
            log.warning("agent %s no longer runs %s (it restarted without it)", hb.agent, m)
            ended = JobEnded(
                job=job,
                attempt=attempt,
                status=Status.INTERRUPTED,
                error=f"agent {hb.agent} restarted and no longer runs this attempt",
                at=now,
            )
            await self.change(run, _applying(ended))
        for m in strs(stale):
            run, job, attempt, _ = effects.parse_member(m)
            log.warning("agent %s still runs %s, which it no longer holds: revoked", hb.agent, m)
            await self._revoke(hb.agent, run, job, attempt)
            if await self._taken_away(run, job, attempt):
                report = fencing.heartbeat_report(job, attempt, hb.agent, now)
                await store.record_stale(self.r, run, fencing.report_field(report), report)
        return bool(gone)

    async def _caught_up(self, seq: int | None) -> bool:
        """Whether every agent event up to stream sequence `seq` has been handled (a
        `job.finished` the agent sent before its heartbeat must not find its attempt
        taken away)."""
        if seq is None:
            return True
        info = await self.js.consumer_info(
            subjects.AGENT_STREAM.name, subjects.DISPATCHER_AGENT_CONSUMER
        )
        return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq

    async def _placer(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), SWEEP)
            self.kick.clear()
            try:
                await self.place_queued()
            except Exception:
                log.exception("placing queued jobs")

    async def _candidates(self) -> list[placement.Candidate]:
        ids = strs(
            await self.r.zrangebyscore(store.ONLINE, time.time() - records.ONLINE_AFTER, "+inf")
        )
        async with self.r.pipeline(transaction=False) as p:
            for agent in ids:
                p.hmget(records.agent_key(agent), ["slots", "used", "labels"])
                p.smembers(records.agent_key(agent, "projects"))
                p.smembers(records.agent_key(agent, "orgs"))
            rows = await p.execute()
        found = []
        for i, agent in enumerate(ids):
            (slots, used, labels), projects, member_of = rows[3 * i : 3 * i + 3]
            if slots is None:
                continue
            if member_of:  # an organization assigns the agent to all its projects
                projects = set(projects) | await orgs.org_projects(self.r, strs(member_of))
            found.append(
                placement.Candidate(
                    agent,
                    frozenset(orjson.loads(labels or "[]")),
                    frozenset(projects),
                    int(slots),
                    int(used or 0),
                )
            )
        return found

    async def place_queued(self) -> None:
        async with self.placing:
            agents = [a for a in await self._candidates() if a.free > 0]
            if not agents:  # nothing can be placed: leave the queue unread
                return
            queued = strs(await self.r.zrange(store.QUEUE, 0, 499))
            if not queued:
                return
            infos = await self.r.hmget(store.QUEUE_INFO, queued)
            for m, info in zip(queued, infos, strict=True):
                if info is None:
                    continue
                wanted = effects.decode_info(str(info))
                chosen = placement.choose(agents, wanted["project"], wanted["runs_on"])
                if chosen is None:
                    continue
                await self._place(m, chosen, wanted["assign"].encode())

    async def _place(self, m: str, agent: placement.Candidate, assign: bytes) -> None:
        msg_id = "assign:" + m
        subject = subjects.agent_inbox(agent.id)
        result = await self.scripts.place(
            keys=[
                store.QUEUE,
                store.QUEUE_INFO,
                store.PLACEMENTS,
                records.agent_key(agent.id),
                records.agent_key(agent.id, "jobs"),
                store.OUTBOX,
                store.PLACED,
            ],
            args=[m, agent.id, msg_id, effects.pack(subject, assign), time.time()],
        )
        if result == 1:
            agent.used += 1
            await self._send_outbox([(msg_id, subject, assign)])
        elif result == -1:
            agent.used = agent.slots

    # --- time: timers, lost agents, sweeps ------------------------------------------

    async def _ticker(self) -> None:
        last_sweep = 0.0
        while True:
            await asyncio.sleep(TICK)
            try:
                await self._fire_timers()
                await self._lost_agents()
                if time.monotonic() - last_sweep >= SWEEP:
                    last_sweep = time.monotonic()
                    await self._sweep_outbox()
                    for gkey in strs(await self.r.smembers(store.GROUPS)):
                        await self._group_advance(gkey)
            except Exception:
                log.exception("ticker")

    async def _fire_timers(self) -> None:
        due = strs(await self.scripts.take_due(keys=[store.TIMERS], args=[time.time(), 200]))
        for entry in due:
            kind, rest = entry.split("|", 1)
            run, job, attempt, _ = effects.parse_member(rest)
            status, error = {
                "job": (Status.TIMED_OUT, "the job timed out"),
                "step": (Status.TIMED_OUT, "the agent sent no result after the step's timeout"),
                "stop": (Status.CANCELLED, "the agent did not confirm the cancel in time"),
            }[kind]
            ended = JobEnded(job=job, attempt=attempt, status=status, error=error, at=time.time())
            await self.change(run, _applying(ended))

    async def _lost_agents(self) -> None:
        cutoff = time.time() - records.ONLINE_AFTER
        lost = strs(await self.scripts.take_due(keys=[store.ONLINE], args=[cutoff, 100]))
        for agent in lost:
            log.warning("agent %s lost: no heartbeat for %.0f s", agent, records.ONLINE_AFTER)
            # work waiting for it would run stale steps if it came back
            with contextlib.suppress(Exception):
                await self.js.purge_stream(
                    subjects.INBOX_STREAM.name, subject=subjects.agent_inbox(agent)
                )
            for m in strs(await self.r.smembers(records.agent_key(agent, "jobs"))):
                await self._release(agent, m)
                run, job, attempt, _ = effects.parse_member(m)
                ended = JobEnded(
                    job=job,
                    attempt=attempt,
                    status=Status.AGENT_LOST,
                    error=f"agent {agent} stopped sending heartbeats",
                    at=time.time(),
                )
                await self.change(run, _applying(ended))

    async def _sweep_outbox(self) -> None:
        """Send what a commit recorded but nobody sent (the sender died); an entry must
        be seen on two sweeps, so messages in flight right now are left alone."""
        entries = {str(i): str(e) for i, e in (await self.r.hgetall(store.OUTBOX)).items()}
        stale = {i: e for i, e in entries.items() if i in self.seen_outbox}
        self.seen_outbox = set(entries) - set(stale)
        await self._send_outbox([(i, *effects.unpack(e)) for i, e in stale.items()])


def _subject_agent(subject: str) -> str:
    """`ry.agent.<id>.…` → `<id>`."""
    parts = subject.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "agent" else ""


def _applying(event: JobEnded) -> Apply:
    return lambda engine, now: engine.apply(event)


def _step_done(event: StepFinished) -> StepDone:
    """The wire message → the engine's event (the one place the two meet)."""
    return StepDone.model_validate(event.model_dump(include=set(StepDone.model_fields)))


def _group(
    pipeline: Pipeline, event: dict[str, Any], inputs: dict[str, Any]
) -> tuple[str | None, bool]:
    if pipeline.concurrency is None:
        return None, False
    contexts = {
        "event": event,
        "input": inputs,
        "inputs": inputs,
        "pipeline": {"name": pipeline.name},
    }
    try:
        group = to_text(render(pipeline.concurrency.group, contexts))
    except ExpressionError as exc:
        log.warning("concurrency group of '%s': %s; using it as written", pipeline.name, exc)
        group = pipeline.concurrency.group
    return group, pipeline.concurrency.cancel_in_progress
