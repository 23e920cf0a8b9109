"""Running one step's process: its own process group, lines streamed as they come,
timeout and cancel stop the whole group (TERM, then KILL after a grace period).

When the step's main process exits, whatever it left running in its group is killed
too: a step's background processes end with the step, and no child outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.status import Status

MAX_LINE = 64 * 1024  # longer lines are split into pieces of this size, never dropped
GRACE = 10.0
PIPE_DRAIN = 5.0

LineSink = Callable[[str, str], None]  # (stream "out" | "err", line without newline)


@dataclass(frozen=True)
class ProcessResult:
    status: Status
    exit_code: int | None


async def _pump(reader: asyncio.StreamReader, stream: str, sink: LineSink) -> None:
    pending = b""
    while chunk := await reader.read(65536):
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


async def _stop_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), grace)
    _signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    sink: LineSink,
    timeout: float | None = None,
    cancel: asyncio.Event | None = None,
    grace: float = GRACE,
) -> ProcessResult:
    """Run `argv` to its end, its timeout, or `cancel` being set."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        sink("err", f"cannot start {argv[0]}: {exc.strerror or exc}")
        return ProcessResult(Status.FAILURE, None)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = asyncio.gather(_pump(proc.stdout, "out", sink), _pump(proc.stderr, "err", sink))
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
    # a grandchild that escaped the group may still hold the pipes open
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pumps, PIPE_DRAIN)
    if stopped:
        return ProcessResult(stopped, proc.returncode)
    status = Status.SUCCESS if proc.returncode == 0 else Status.FAILURE
    return ProcessResult(status, proc.returncode)
