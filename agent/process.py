"""Running one step's process: its own process group, lines streamed as they come,
timeout and cancel stop the whole group (TERM, then KILL after a grace period).

When the step's main process exits, whatever it left running in its group is killed
too: a step's background processes end with the step, and no child outlives it.

The agent passes a `Spawn` (agent/launcher.py: its job's spawner starts the process,
with a parent-death signal, inside the job's sandbox) and a `Tracker`, which learns the
step's process group so the agent's watchdog can end it (agent/reaper.py). Without a
`Spawn` (local mode), the process is a child of this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from schemas.status import Status

MAX_LINE = 64 * 1024  # longer lines are split into pieces of this size, never dropped
GRACE = 10.0
PIPE_DRAIN = 5.0

LineSink = Callable[[str, str], None]  # (stream "out" | "err", line without newline)
# Awaited after each chunk read: returns once the sink can take more (backpressure; the
# step blocks writing to a full pipe meanwhile).
Throttle = Callable[[], Awaitable[None]]


class Tracker(Protocol):
    """Follows one step's processes for the agent (agent/guard.py)."""

    def started(self, pid: int) -> None:
        """The step's main process runs: `pid` is also its process group."""


class Child(Protocol):
    """A started step process (`asyncio.subprocess.Process` is one)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    @property
    def stderr(self) -> asyncio.StreamReader | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


# (argv, cwd, env) → the started process, in a session of its own, stdin /dev/null and
# stdout and stderr on pipes; OSError when it cannot start
Spawn = Callable[[Sequence[str], Path, Mapping[str, str]], Awaitable[Child]]


async def spawn_here(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> Child:
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


@dataclass(frozen=True)
class ProcessResult:
    status: Status
    exit_code: int | None


@dataclass
class _Progress:
    chunks: int = 0


async def _pump(
    reader: asyncio.StreamReader,
    stream: str,
    sink: LineSink,
    throttle: Throttle | None,
    progress: _Progress,
) -> None:
    pending = b""
    while chunk := await reader.read(65536):
        progress.chunks += 1
        if throttle is not None:
            await throttle()
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _emit(line, stream, sink)
        while len(pending) > MAX_LINE:
            sink(stream, pending[:MAX_LINE].decode(errors="replace"))
            pending = pending[MAX_LINE:]
    if pending:
        _emit(pending, stream, sink)


def _emit(line: bytes, stream: str, sink: LineSink) -> None:
    line = line.removesuffix(b"\r")
    for start in range(0, max(len(line), 1), MAX_LINE):
        sink(stream, line[start : start + MAX_LINE].decode(errors="replace"))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _stop_group(proc: Child, grace: float) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
    if proc.returncode is None:  # whoever reports its exit does not answer
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()


async def _drain(pumps: asyncio.Future[Any], progress: _Progress) -> None:
    """Read what is left in the pipes; give up only after PIPE_DRAIN seconds without
    output (a grandchild that escaped the group may hold them open forever)."""
    while True:
        seen = progress.chunks
        done, _ = await asyncio.wait({pumps}, timeout=PIPE_DRAIN)
        if done:
            return
        if progress.chunks == seen:
            pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumps
            return


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    sink: LineSink,
    timeout: float | None = None,
    cancel: asyncio.Event | None = None,
    grace: float = GRACE,
    throttle: Throttle | None = None,
    spawn: Spawn = spawn_here,
    tracker: Tracker | None = None,
) -> ProcessResult:
    """Run `argv` to its end, its timeout, or `cancel` being set."""
    try:
        proc = await spawn(argv, cwd, env)
    except (OSError, subprocess.SubprocessError) as exc:
        sink("err", f"cannot start {argv[0]}: {getattr(exc, 'strerror', None) or exc}")
        return ProcessResult(Status.FAILURE, None)
    if tracker is not None:
        tracker.started(proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    progress = _Progress()
    pumps = asyncio.gather(
        _pump(proc.stdout, "out", sink, throttle, progress),
        _pump(proc.stderr, "err", sink, throttle, progress),
    )
    waiters = {asyncio.ensure_future(proc.wait())}
    if cancel is not None:
        waiters.add(asyncio.ensure_future(cancel.wait()))
    _done, pending = await asyncio.wait(
        waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
    stopped: Status | None = None
    if proc.returncode is None:
        stopped = Status.CANCELLED if cancel is not None and cancel.is_set() else Status.TIMED_OUT
        await _stop_group(proc, grace)
    else:
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers of a finished step
    await _drain(pumps, progress)
    if stopped:
        return ProcessResult(stopped, proc.returncode)
    status = Status.SUCCESS if proc.returncode == 0 else Status.FAILURE
    return ProcessResult(status, proc.returncode)
