"""The agent process (`runyard agent start`): takes work from its inbox on NATS, runs
it with the local-mode runners, and reports back (DESIGN.md §4, §6).

Acks: a `job.assign` is acked once the claim is stored in RY_AGENT, a `step.assign` once
its `step.finished` is, so work is never lost with the connection; a journal of
finished steps on disk turns a redelivered message into a re-sent result, not a second
run. Running steps never wait on NATS: their lines and results go through the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from agent import artifacts, git, junit, metrics
from agent.actions import ActionCache
from agent.collect import matching_files
from agent.config import AgentConfig
from agent.logship import StepLog
from agent.runners import StepResult, StepRunner
from agent.sandbox import Sandbox
from agent.spool import Spool
from runyard.engine.events import ResolvedStep
from schemas import subjects
from schemas.messages import (
    AgentRemoved,
    ArtifactFile,
    Heartbeat,
    JobAssign,
    JobClaimed,
    JobFinish,
    JobFinished,
    JobRevoked,
    StepAssign,
    StepFinished,
    TestSummary,
    decode_control,
    decode_inbox,
)
from schemas.pipeline import ActionRef
from schemas.status import Status

log = logging.getLogger("runyard.agent")

HEARTBEAT = 5.0
IN_PROGRESS = 20.0  # well inside the inbox consumer's ack wait
JOURNAL_KEEP = 10_000
SHUTDOWN = 30.0  # seconds for Ctrl-C: cancel steps (10 s grace), report, flush
REFUSED_FOR = 60.0  # seconds of refused reconnects before the agent gives up
RETRY_CONNECT = 2.0  # seconds between tries to reach a server that is not there yet


class Refused(RuntimeError):
    """The server does not accept this agent's credentials (wrong token, or removed),
    or the agent does not accept the server (its certificate does not verify)."""


def tls_context(config: AgentConfig) -> ssl.SSLContext | None:
    """Verify the server against the agent file's CA (else the system's CAs)."""
    if not config.ca:
        return None
    return ssl.create_default_context(cadata=config.ca)


def _options(config: AgentConfig) -> dict[str, Any]:
    """How this agent identifies itself: its id and token are its NATS user and
    password (checked by the server's auth callout), and replies come on its own inbox
    prefix, the only one its identity may subscribe to."""
    return {
        "name": f"runyard-agent-{config.id}",
        "user": config.id,
        "password": config.token,
        "inbox_prefix": subjects.agent_reply_prefix(config.id),
        "tls": tls_context(config),
        "connect_timeout": 5,
    }


def _servers(url: str) -> list[str]:
    return [u.strip() for u in url.split(",")]  # a cluster: several, comma-separated


def _is_refusal(error: BaseException | str) -> bool:
    return "authorization violation" in str(error).lower()


async def _probe(config: AgentConfig, url: str) -> list[str]:
    """Connect once without reconnecting: [] when admitted, else what went wrong."""
    probe = Client()
    errors: list[str] = []

    async def keep(exc: Exception) -> None:
        errors.append(str(exc) or type(exc).__name__)

    try:
        await probe.connect(
            _servers(url),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=keep,
            **_options(config),
        )
    except Exception as exc:
        errors.append(str(exc) or type(exc).__name__)
    finally:
        admitted = probe.is_connected
        with contextlib.suppress(Exception):  # nats-py's close hangs after a TLS failure
            await asyncio.wait_for(probe.close(), 2)
    return [] if admitted else errors or ["closed while connecting"]


async def admitted(config: AgentConfig, url: str, stop: asyncio.Event) -> bool:
    """Wait until the server admits this agent (True), or `stop` is set (False);
    `Refused` when it rejects the credentials. A server that cannot be reached yet is
    retried, one log line a try."""
    while not stop.is_set():
        errors = await _probe(config, url)
        if not errors:
            return True
        if any(_is_refusal(e) for e in errors):
            raise Refused(
                f"the server refused agent {config.id}: its token is wrong, the agent was "
                "removed (create it again with `runyard agent create`), or the server "
                "could not check it (see its dispatcher's log)"
            )
        if any("CERTIFICATE_VERIFY_FAILED" in e for e in errors):
            raise Refused(
                f"the server at {url} is not the one this agent was made for: its TLS "
                f"certificate does not verify against the CA in agent.json ({errors[-1]})"
            )
        log.warning("cannot reach NATS at %s (%s); retrying", url, errors[-1])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETRY_CONNECT)
    return False


async def connect(config: AgentConfig, url: str, refused: asyncio.Event | None = None) -> Client:
    """`nats://`, `tls://`, `ws://` or `wss://`; reconnects on its own for as long as
    it runs (call `admitted` first: this waits for the server). `refused` is set once
    reconnects stay refused for REFUSED_FOR seconds (the agent was removed)."""
    since: list[float] = []

    async def error(exc: Exception) -> None:
        if _is_refusal(exc):
            since.append(time.monotonic())
            if refused is not None and since[-1] - since[0] >= REFUSED_FOR:
                refused.set()
            return
        log.warning("NATS: %s", exc or type(exc).__name__)

    async def reconnected() -> None:
        since.clear()
        log.info("reconnected to NATS")

    async def disconnected() -> None:
        log.warning("disconnected from NATS; reconnecting")

    return await nats.connect(
        _servers(url),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        error_cb=error,
        reconnected_cb=reconnected,
        disconnected_cb=disconnected,
        **_options(config),
    )


def job_key(run: str, job: str, attempt: int) -> str:
    return f"{run}|{job}|{attempt}"


class Journal:
    """Keys of finished steps and jobs, on disk, so redelivered work is not run again."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = path.read_text().splitlines() if path.exists() else []
        self.done = set(lines[-JOURNAL_KEEP:])
        path.write_text("".join(f"{k}\n" for k in lines[-JOURNAL_KEEP:]))
        self.path = path

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def add(self, key: str) -> None:
        self.done.add(key)
        with self.path.open("a") as out:
            out.write(key + "\n")


@dataclass
class Collected:
    artifacts: list[ArtifactFile] = field(default_factory=list)
    tests: TestSummary | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class Job:
    assign: JobAssign
    workspace: Path
    setup_error: str | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    step: asyncio.Task[None] | None = None
    step_index: int | None = None
    step_msg: Msg | None = None
    revoked: bool = False  # another agent holds the attempt now: report nothing


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        nc: Client,
        directory: Path,
        slots: int,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.dir = directory
        self.slots = slots
        self.spool = Spool(nc, directory / "spool")
        self.journal = Journal(directory / "state" / "done")
        cache = directory / "cache"
        self.runner = StepRunner(ActionCache(cache / "actions"), cache, sandbox)
        self.jobs: dict[str, Job] = {}
        self.removed = asyncio.Event()  # the server said this agent no longer exists
        self.tasks: set[asyncio.Task[None]] = set()
        self.host = metrics.host_context(config.id, config.name)

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.spool.start()
        await self.nc.subscribe(subjects.agent_control(self.config.id), cb=self._on_control)
        fetcher = asyncio.ensure_future(self._fetch())
        beater = asyncio.ensure_future(self._heartbeats())
        keeper = asyncio.ensure_future(self._keep_in_progress())
        log.info(
            "agent %s (%s) started with %d slots", self.config.name, self.config.id, self.slots
        )
        await stop.wait()
        fetcher.cancel()
        keeper.cancel()
        try:
            await asyncio.wait_for(self._shutdown(), SHUTDOWN)
        except TimeoutError:
            log.error("could not stop cleanly within %.0f s; leaving now", SHUTDOWN)
        beater.cancel()
        await asyncio.gather(fetcher, beater, keeper, return_exceptions=True)

    async def _shutdown(self) -> None:
        """Ctrl-C: cancel running steps, report them, send what is queued."""
        for job in self.jobs.values():
            job.cancel.set()
        running = [j.step for j in self.jobs.values() if j.step is not None]
        await asyncio.gather(*running, return_exceptions=True)
        if not await self.spool.drained(10):
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
        while True:
            try:
                msgs = await sub.fetch(1, timeout=5)
            except TimeoutError:
                continue
            except Exception as exc:
                log.debug("fetch: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                self._dispatch(msg)

    def _dispatch(self, msg: Msg) -> None:
        try:
            work = decode_inbox(msg.data)
        except ValueError as exc:
            log.error("dropping an unreadable inbox message: %s", exc)
            self._spawn(msg.term())
            return
        if isinstance(work, JobAssign):
            self._spawn(self._job_assigned(work, msg))
        elif isinstance(work, StepAssign):
            self._step_assigned(work, msg)
        else:
            self._spawn(self._job_finish(work, msg))

    # --- jobs -----------------------------------------------------------------------

    async def _job_assigned(self, assign: JobAssign, msg: Msg) -> None:
        key = job_key(assign.run, assign.job, assign.attempt)
        if key in self.jobs or f"job:{key}" in self.journal:
            await msg.ack()
            return
        workspace = self.dir / "work" / assign.run / assign.job
        job = Job(assign, workspace)
        self.jobs[key] = job
        if workspace.exists():  # an earlier attempt's: start clean
            await asyncio.to_thread(shutil.rmtree, workspace, True)
        workspace.mkdir(parents=True, exist_ok=True)
        if assign.repository:
            try:
                ref, _ = await git.resolve(assign.repository, assign.sha or assign.ref or "HEAD")
                await git.fetch_checkout(assign.repository, ref, workspace)
            except git.GitError as exc:
                job.setup_error = f"checkout of {assign.repository} failed: {exc}"
        claimed = JobClaimed(
            agent=self.config.id,
            run=assign.run,
            job=assign.job,
            attempt=assign.attempt,
            workspace=str(workspace),
            host=self.host,
            at=time.time(),
        )
        self.spool.put(
            subjects.agent_events(self.config.id), claimed.encode(), "claim:" + key, msg.ack
        )

    async def _job_finish(self, finish: JobFinish, msg: Msg) -> None:
        key = job_key(finish.run, finish.job, finish.attempt)
        job = self.jobs.pop(key, None)
        if job is None and f"job:{key}" in self.journal:
            await msg.ack()
            return
        collected = Collected()
        if job is not None:
            job.cancel.set()
            if job.step is not None:
                await asyncio.gather(job.step, return_exceptions=True)
            collected = await self._collect(job.workspace, finish)
            await asyncio.to_thread(shutil.rmtree, job.workspace, True)
        self.journal.add(f"job:{key}")
        done = JobFinished(
            agent=self.config.id,
            run=finish.run,
            job=finish.job,
            attempt=finish.attempt,
            status=finish.status,
            artifacts=collected.artifacts,
            tests=collected.tests,
            errors=collected.errors,
            at=time.time(),
        )
        self.spool.put(subjects.agent_events(self.config.id), done.encode(), "done:" + key, msg.ack)

    async def _collect(self, workspace: Path, finish: JobFinish) -> Collected:
        """The job's test results and artifacts; what failed goes into `errors`."""
        found = Collected()
        if finish.test_results:
            reports = await asyncio.to_thread(matching_files, workspace, finish.test_results)
            summaries = []
            for rel, path in reports:
                try:
                    summaries.append(await asyncio.to_thread(junit.parse_file, path, rel))
                except junit.ReportError as exc:
                    found.errors.append(str(exc))
            if summaries:
                found.tests = junit.merge(summaries)
        try:
            stored, problems = await artifacts.upload(
                self.js,
                self.config.id,
                workspace,
                finish.run,
                finish.job,
                finish.artifacts,
                finish.status == Status.SUCCESS,
                finish.artifact_limit,
            )
        except Exception as exc:  # the object store refused: say so, do not hold the job
            stored, problems = [], [f"artifacts not stored: {exc}"]
        found.artifacts += stored
        found.errors += problems
        return found

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
        job = self.jobs.get(key)
        if isinstance(control, JobRevoked):
            await self._revoked(key, job)
        elif job is not None:
            job.cancel.set()

    async def _revoked(self, key: str, job: Job | None) -> None:
        """The attempt went to another agent: stop it, say nothing more about it."""
        log.warning("job %s was given to another agent; stopping it here", key)
        self.journal.add(f"job:{key}")
        if job is None:
            return
        job.revoked = True
        job.cancel.set()
        if job.step is not None:
            await asyncio.gather(job.step, return_exceptions=True)
        self.jobs.pop(key, None)
        await asyncio.to_thread(shutil.rmtree, job.workspace, True)

    # --- steps ----------------------------------------------------------------------

    def _step_assigned(self, assign: StepAssign, msg: Msg) -> None:
        key = job_key(assign.run, assign.job, assign.attempt)
        step_key = f"step:{key}|{assign.index}"
        if step_key in self.journal:  # its result is sent or in the spool
            self._spawn(msg.ack())
            return
        job = self.jobs.get(key)
        if job is None:  # this process did not see the claim (it restarted): carry on
            workspace = self.dir / "work" / assign.run / assign.job
            workspace.mkdir(parents=True, exist_ok=True)
            placeholder = JobAssign(
                run=assign.run, job=assign.job, attempt=assign.attempt, project="", pipeline=""
            )
            job = self.jobs[key] = Job(placeholder, workspace)
        if job.step_index == assign.index and job.step is not None:
            job.step_msg = msg  # a redelivery of the running step: ack the newest one
            return
        job.cancel = asyncio.Event()  # a fresh one per step, as in local mode
        job.step_index, job.step_msg = assign.index, msg
        job.step = self._spawn(self._run_step(job, assign, step_key))

    async def _run_step(self, job: Job, assign: StepAssign, step_key: str) -> None:
        sink = StepLog(
            self.spool, self.config.id, assign.run, assign.job, assign.attempt, assign.step
        )
        if job.setup_error:
            sink("err", job.setup_error)
            now = time.time()
            result = StepResult(
                Status.FAILURE, error=job.setup_error, started_at=now, finished_at=now
            )
        else:
            result = await self.runner.run(resolved(assign), job.workspace, sink, job.cancel)
        sink.flush(final=True)
        self.journal.add(step_key)
        if job.revoked:
            return
        finished = StepFinished(
            agent=self.config.id,
            run=assign.run,
            job=assign.job,
            attempt=assign.attempt,
            index=assign.index,
            step=assign.step,
            **result.report(),
        )

        async def ack() -> None:
            if job.step_msg is not None:
                await job.step_msg.ack()

        self.spool.put(
            subjects.agent_events(self.config.id), finished.encode(), "sf:" + step_key[5:], ack
        )
        job.step_index = None

    async def _keep_in_progress(self) -> None:
        """Long steps: tell JetStream the step message is still being worked on."""
        while True:
            await asyncio.sleep(IN_PROGRESS)
            for job in list(self.jobs.values()):
                if job.step_msg is not None and job.step_index is not None:
                    with contextlib.suppress(Exception):
                        await job.step_msg.in_progress()

    # --- heartbeats -----------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            try:
                hb = Heartbeat(
                    agent=self.config.id,
                    slots=self.slots,
                    free_slots=max(self.slots - len(self.jobs), 0),
                    jobs=list(self.jobs),
                    metrics=await asyncio.to_thread(metrics.collect, self.dir),
                    at=time.time(),
                )
                if self.nc.is_connected:
                    await self.nc.publish(subjects.agent_heartbeat(self.config.id), hb.encode())
            except Exception as exc:
                log.debug("heartbeat: %s", exc)
            await asyncio.sleep(HEARTBEAT)


def resolved(assign: StepAssign) -> ResolvedStep:
    """The wire message → what a runner executes."""
    return ResolvedStep(
        index=assign.index,
        id=assign.step,
        name=assign.name,
        script=assign.run_script,
        shell=assign.shell,
        action=ActionRef.model_validate(assign.action) if assign.action else None,
        inputs=assign.inputs,
        env=assign.env,
        working_directory=assign.working_directory,
        timeout=assign.timeout,
        cache=assign.cache,
        mask=assign.mask,
    )
