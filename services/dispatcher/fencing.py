"""Which agent may speak for a job attempt (no I/O).

The attempt number is the fencing token: every assignment carries it, the placement
`run|job|attempt → agent` names the one agent that holds it, and an event or heartbeat
about an attempt is believed only from that agent. What an agent says about an attempt
it no longer holds is dropped, answered with `job.revoked`, and kept with the run as a
*stale* report, so an operator sees what a lost agent still did.

Heartbeats reconcile slots: the agent lists the attempts it holds, and a placement it
does not list is taken back once it is clear the agent is not about to receive it — it
was placed more than PUBLISH_SLACK seconds before the agent last found its inbox empty.
"""

from __future__ import annotations

from typing import Any

from runyard.engine.state import JobState
from schemas.messages import Heartbeat, JobClaimed, JobFinished, StepFinished
from schemas.status import Status

# Seconds between a placement's commit and its assignment reaching the inbox stream: ms
# normally; up to two outbox sweeps (2 s each) when the placing dispatcher died.
PUBLISH_SLACK = 5.0
# How an attempt ends when its agent does not hold it any more.
TAKEN = (Status.AGENT_LOST, Status.INTERRUPTED)


def reconcile_cutoff(hb: Heartbeat, now: float) -> float:
    """Placements older than this that the heartbeat does not list are gone (0: none).

    `inbox_checked` is measured on the agent's clock as a duration, so clocks that
    disagree do not matter."""
    if hb.inbox_checked is None:
        return 0.0
    return now - hb.inbox_checked - PUBLISH_SLACK


def event_report(event: JobClaimed | StepFinished | JobFinished, now: float) -> dict[str, Any]:
    """A dropped agent event as the run keeps it."""
    report: dict[str, Any] = {
        "job": event.job,
        "attempt": event.attempt,
        "agent": event.agent,
        "what": event.type,
        "at": now,
    }
    if isinstance(event, StepFinished):
        report |= {"step": event.step, "index": event.index, "status": str(event.status)}
    elif isinstance(event, JobFinished):
        report["status"] = str(event.status)
    return report


def report_field(report: dict[str, Any]) -> str:
    parts = [report["job"], str(report["attempt"]), report["agent"], report["what"]]
    if "index" in report:
        parts.append(str(report["index"]))
    return "|".join(parts)


def heartbeat_report(job: str, attempt: int, agent: str, now: float) -> dict[str, Any]:
    return {"job": job, "attempt": attempt, "agent": agent, "what": "heartbeat", "at": now}


def taken_away(job: JobState, attempt: int) -> bool:
    """True when `attempt` ended because its agent was lost or interrupted — a report
    about it from that agent is a late one. An attempt that ended normally is not: a
    heartbeat sent just before the agent let go of it may cross the release."""
    if attempt == job.attempt:
        return job.status in TAKEN
    return any(a.attempt == attempt and a.status in TAKEN for a in job.attempts)
