"""What the agent writes down before it acts, so a restarted agent knows what its
predecessor left (DESIGN.md §10: a step runs at most once per attempt).

- `Journal` (`state/done`): keys of finished steps and jobs; a redelivered message for
  one is acked, never run again.
- `Ledger` (`state/started`): the jobs this agent claimed (with their `job.assign`, and
  whether their workspace was made), the steps it started (written *before* a step's
  process starts), each step's process group and start time, and the last result sent
  for each job. An entry leaves the ledger
  when its job or step ends. What a restarted agent finds there was interrupted: it
  kills what is left of it and reports the step `interrupted`; its job's next step (if
  any) belongs to a new attempt.

Both are append-only text files, one record a line; the ledger is rewritten with only
its open entries when it has grown (`compact`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

JOURNAL_KEEP = 10_000
LEDGER_COMPACT = 10_000  # lines appended before the ledger is rewritten


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
class StartedStep:
    """A step whose process may be running: `pgid` and `ticks` (its start time in
    clock ticks since boot, /proc/<pid>/stat) tell its group from a reused pid."""

    key: str  # run|job|attempt|index
    job: str  # run|job|attempt
    step: str  # the step's id
    at: float
    pgid: int | None = None
    ticks: int | None = None


@dataclass
class OpenJob:
    key: str  # run|job|attempt
    assign: bytes | None = None  # its job.assign, to prepare it again after a restart
    prepared: bool = False  # its workspace, code and spawner were made
    result: bytes | None = None  # the last step.finished sent for it (re-sent on restart)
    steps: dict[str, StartedStep] = field(default_factory=dict)


class Ledger:
    """Claimed jobs and started steps that have not ended (see the module's doc)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.jobs: dict[str, OpenJob] = {}
        if path.exists():
            for raw in path.read_bytes().splitlines():
                try:
                    self._replay(orjson.loads(raw))
                except (ValueError, KeyError, TypeError):  # a line cut short by a crash
                    continue
        self._out: IO[bytes] | None = None
        self._lines = 0
        self.compact()

    # --- writing --------------------------------------------------------------------

    def claim(self, job: str, assign: bytes | None = None) -> None:
        record: dict[str, Any] = {"op": "claim", "job": job}
        if assign is not None:
            record["assign"] = assign.decode()
        self._write(record)

    def prepared(self, job: str) -> None:
        """Its workspace has the code: a restart need not make it again."""
        self._write({"op": "prepared", "job": job})

    def start(self, job: str, index: int, step: str, at: float) -> str:
        """Before anything of the step runs; its key (`run|job|attempt|index`)."""
        key = f"{job}|{index}"
        self._write({"op": "start", "job": job, "key": key, "step": step, "at": at})
        return key

    def process(self, job: str, key: str, pgid: int, ticks: int | None) -> None:
        self._write({"op": "pid", "job": job, "key": key, "pgid": pgid, "ticks": ticks})

    def step_done(self, job: str, key: str, result: bytes | None) -> None:
        """The step ended and `result` (its step.finished) is queued to be sent."""
        record = {"op": "done", "job": job, "key": key}
        if result is not None:
            record["result"] = result.decode()
        self._write(record)

    def job_done(self, job: str) -> None:
        self._write({"op": "end", "job": job})

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def compact(self) -> None:
        """Rewrite the file with the open entries only."""
        self.close()
        records: list[dict[str, Any]] = []
        for job in self.jobs.values():
            claim: dict[str, Any] = {"op": "claim", "job": job.key}
            if job.assign is not None:
                claim["assign"] = job.assign.decode()
            records.append(claim)
            if job.prepared:
                records.append({"op": "prepared", "job": job.key})
            if job.result is not None:
                records.append({"op": "done", "job": job.key, "result": job.result.decode()})
            for s in job.steps.values():
                records.append(
                    {"op": "start", "job": job.key, "key": s.key, "step": s.step, "at": s.at}
                )
                if s.pgid is not None:
                    pid = {"op": "pid", "job": job.key, "key": s.key, "pgid": s.pgid}
                    records.append(pid | {"ticks": s.ticks})
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        tmp.replace(self.path)
        self._lines = len(records)

    def _write(self, record: dict[str, Any]) -> None:
        self._replay(record)
        if self._out is None:
            self._out = self.path.open("ab", buffering=0)
        self._out.write(orjson.dumps(record) + b"\n")
        self._lines += 1
        if self._lines > LEDGER_COMPACT:
            self.compact()

    # --- reading --------------------------------------------------------------------

    def _replay(self, r: dict[str, Any]) -> None:
        op, job_key = r["op"], str(r["job"])
        if op == "end":
            self.jobs.pop(job_key, None)
            return
        job = self.jobs.setdefault(job_key, OpenJob(job_key))
        key = str(r.get("key") or "")
        if op == "claim" and r.get("assign"):
            job.assign = str(r["assign"]).encode()
        elif op == "prepared":
            job.prepared = True
        elif op == "start":
            job.steps[key] = StartedStep(key, job_key, str(r["step"]), float(r["at"]))
        elif op == "pid" and key in job.steps:
            started = job.steps[key]
            started.pgid = int(r["pgid"])
            started.ticks = int(r["ticks"]) if r.get("ticks") is not None else None
        elif op == "done":
            job.steps.pop(key, None)
            if r.get("result"):
                job.result = str(r["result"]).encode()
