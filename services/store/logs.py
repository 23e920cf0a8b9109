"""Step logs: one Redis stream per step attempt (entry id `<seq>-1`, fields t = time,
s = out/err, x = text) and a meta hash (last seq stored, bytes, dropped lines and
bytes past the cap, ended)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.subjects import key
from services.store.connection import Redis, strdict


def log_key(run: str, job: str, attempt: int, step: str) -> str:
    return key("log", run, job, str(attempt), step)


def meta_key(run: str, job: str, attempt: int, step: str) -> str:
    return key("logmeta", run, job, str(attempt), step)


@dataclass
class LogPage:
    lines: list[dict[str, Any]]
    next: int  # the seq to ask for next
    ended: bool  # the step's whole log is stored
    truncated: dict[str, int] | None  # lines and bytes dropped past the cap
    last: int = 0  # the last line number stored so far

    def public(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "next": self.next,
            "ended": self.ended,
            "truncated": self.truncated,
            "last": self.last,
        }


def _line(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    return {
        "seq": int(entry_id.split("-")[0]),
        "at": float(fields["t"]),
        "stream": fields["s"],
        "text": fields["x"],
    }


def truncation_line(truncated: dict[str, int], after: int) -> dict[str, Any]:
    """The single marker shown past the cap."""
    return {
        "seq": after + 1,
        "at": 0.0,
        "stream": "err",
        "text": f"[log truncated: {truncated['lines']} more line(s), "
        f"{truncated['bytes']} bytes, were dropped past the size cap]",
        "marker": True,
    }


async def read(
    r: Redis, run: str, job: str, attempt: int, step: str, start: int, limit: int = 1000
) -> LogPage:
    """Lines with seq ≥ `start`, in order."""
    entries = await r.xrange(log_key(run, job, attempt, step), f"{start}-0", "+", count=limit)
    lines = [_line(str(i), strdict(f)) for i, f in entries or []]
    meta = strdict(await r.hgetall(meta_key(run, job, attempt, step)))
    dropped = int(meta.get("dropped_lines", 0))
    truncated = {"lines": dropped, "bytes": int(meta.get("dropped_bytes", 0))} if dropped else None
    nxt = lines[-1]["seq"] + 1 if lines else start
    complete = meta.get("ended") == "1" and len(lines) < limit
    return LogPage(lines, nxt, complete, truncated, int(meta.get("last", 0)))
