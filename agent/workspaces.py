"""Job workspaces under `<agent dir>/work/<run>/<job>` (`<job>~<n>` for retry n): made
when a job is claimed, removed when it is finished, cancelled, revoked or found left
behind by a killed agent. With a retention (`runyard agent start --keep-workspaces
SECONDS`) a finished job's workspace stays that long for inspection; `sweep` removes it
afterwards, and an emptied `work/<run>/` goes with its last job."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

SWEEP_EVERY = 600.0  # seconds between sweeps of work/ while the agent runs
# A workspace no job holds is left alone this long at least: one being made for a job
# that arrived while the sweep ran looks just like that.
MIN_AGE = 60.0


def folder(job: str, attempt: int) -> str:
    """A retry gets a workspace of its own: the attempt before may still be finishing
    (collecting, then removing its workspace) when the retry is claimed."""
    return job if attempt == 1 else f"{job}~{attempt}"


def path(work: Path, run: str, job: str, attempt: int) -> Path:
    return work / run / folder(job, attempt)


def finished(workspace: Path, keep: float) -> None:
    """The job is over: remove its workspace now, or mark when it ended."""
    if keep <= 0:
        remove(workspace)
        return
    with contextlib.suppress(OSError):
        os.utime(workspace)


def remove(workspace: Path) -> None:
    shutil.rmtree(workspace, ignore_errors=True)
    with contextlib.suppress(OSError):  # the run's folder, once its last job is gone
        workspace.parent.rmdir()


def sweep(work: Path, active: set[tuple[str, str]], keep: float, now: float | None = None) -> int:
    """Remove workspaces of jobs not in `active` ((run, job) pairs this agent runs)
    untouched for `keep` seconds (MIN_AGE at least), and empty run folders; how many
    were removed."""
    now = time.time() if now is None else now
    removed = 0
    if not work.is_dir():
        return 0
    for run in [p for p in work.iterdir() if p.is_dir()]:
        for job in [p for p in run.iterdir() if p.is_dir()]:
            if (run.name, job.name) in active:
                continue
            with contextlib.suppress(OSError):
                if now - job.stat().st_mtime >= max(keep, MIN_AGE):
                    shutil.rmtree(job, ignore_errors=True)
                    removed += 1
        with contextlib.suppress(OSError):
            run.rmdir()
    return removed
