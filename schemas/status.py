"""Statuses of runs, jobs and steps."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    TIMED_OUT = "timed-out"
    AGENT_LOST = "agent-lost"
    # the agent stopped (killed, restarted) while the step ran: the attempt ends and is
    # retried like `agent-lost`; a step never runs twice within one attempt
    INTERRUPTED = "interrupted"

    @property
    def final(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)

    @property
    def ok(self) -> bool:
        """Counts as passing for `success()` (a skipped step does not fail its job)."""
        return self in (Status.SUCCESS, Status.SKIPPED)
