"""Which agent takes a queued job (no I/O): online, assigned to the project, carrying
every label of `runs-on`, with a free slot; among those the least loaded, so work
spreads over agents rather than filling the first one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass
class Candidate:
    id: str
    labels: frozenset[str]
    projects: frozenset[str]
    slots: int
    used: int

    @property
    def free(self) -> int:
        return self.slots - self.used


def candidate(row: list[Any]) -> Candidate:
    """An agent as the `FREE_FOR` script reads it: [id, slots, used,
    labels JSON, projects it was found to serve (directly or through its organizations)]."""
    agent, slots, used, labels, projects = row
    return Candidate(
        agent, frozenset(orjson.loads(labels)), frozenset(projects or ()), int(slots), int(used)
    )


def eligible(agent: Candidate, project: str, runs_on: list[str]) -> bool:
    return project in agent.projects and set(runs_on) <= agent.labels


def choose(agents: list[Candidate], project: str, runs_on: list[str]) -> Candidate | None:
    fits = [a for a in agents if a.free > 0 and eligible(a, project, runs_on)]
    if not fits:
        return None
    return min(fits, key=lambda a: (a.used / a.slots, -a.free, a.id))
