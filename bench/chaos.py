"""Chaos: bursts of multi-step runs with side effects while agents are killed and
restarted, killed and left down, stopped and resumed, and the dispatcher, the log
collector, nats-server and valkey-server are killed (DESIGN.md §9, §10).

Each step prints numbered lines (`x <token> <n>`, a random token per execution) and
then appends one side effect, `<run> <attempt> <step> <token>`, to a file. Afterwards:

- every run ended;
- no step's side effect appears twice within an attempt (duplicates), and each step of
  a run that succeeded has its effect in the attempt that succeeded (lost effects);
- every stored log (one per run, job, attempt and step) holds one execution's lines,
  numbered from 1 without gaps or repeats, all of them when that step succeeded;
- no process of a step is left running, and no job's workspace is left behind.

Recovery time, per fault: from the fault until every job running at that moment on
the part it hit (any job, for a server or service) has moved on: a step finished, or
the job ended. `tests/system/test_chaos.py` runs the short form; this script runs
longer bursts, one fault at a time, and prints a table:

    python bench/chaos.py --runs 20 --steps 5 --json out/chaos.json
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos_system import ChaosSystem

PROJECT = "chaos"
AGENT_FAULTS = ("agent-restart", "agent-down", "agent-stop")
SERVICE_FAULTS = ("dispatcher", "collector", "nats", "valkey")
FAULTS = AGENT_FAULTS + SERVICE_FAULTS
PARTS = {"dispatcher": "dispatcher", "collector": "logs", "nats": "nats-server"}
PARTS["valkey"] = "valkey-server"
DOWN = 1.0  # seconds a killed part stays down before it is started again
STOPPED = 35.0  # seconds an agent stays stopped: past the 30 s after which it is lost
RUN_TIMEOUT = 150.0  # seconds for a burst's runs to end after its faults
POLL = 0.4
LOG_WAIT = 30.0  # seconds for the logs of ended steps to be stored, after every run ended
LINE = re.compile(r"^x (\d+) (\d+)$")


@dataclass(frozen=True)
class Settings:
    runs: int = 4  # per burst
    steps: int = 4  # per run (one job)
    lines: int = 5  # printed by each step
    pause: float = 0.06  # seconds between a step's lines
    agents: int = 3
    slots: int = 2
    # faults that strike together in one burst; the short form overlaps the agent
    # faults (the stopped agent's 35 s cover the others) to stay within two minutes
    phases: tuple[tuple[str, ...], ...] = (AGENT_FAULTS, *((f,) for f in SERVICE_FAULTS))


@dataclass
class Row:
    fault: str
    runs: int = 0
    succeeded: int = 0
    duplicate_effects: int = 0
    lost_effects: int = 0
    recovery_s: float = 0.0
    retried: int = 0  # runs whose job needed more than one attempt (the fault struck)


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # runs that never ended
    duplicates: list[str] = field(default_factory=list)  # "run attempt step" seen twice
    lost: list[str] = field(default_factory=list)  # "run attempt step" never seen
    bad_logs: list[str] = field(default_factory=list)  # "run job attempt step: why"
    processes: list[str] = field(default_factory=list)  # step processes left running
    workspaces: list[str] = field(default_factory=list)  # job folders left behind
    problems: list[str] = field(default_factory=list)  # everything above, in sentences


def pipeline(settings: Settings, effects: Path) -> str:
    """Steps whose side effect survives their agent: a step that outlives a killed agent
    (no parent-death signal, no cgroup) must not die of writing to its closed pipe
    first, as a real step (a deploy, a long computation) would not."""
    steps = []
    for i in range(settings.steps):
        script = (
            # each execution's own token: `$$` is not one (a sandboxed job's steps have
            # pids of its own PID namespace, the same again in the next execution)
            f'me=$(od -An -N4 -tu4 /dev/urandom | tr -d " "); '
            f'trap "" PIPE; for n in $(seq 1 {settings.lines}); do echo "x $me $n" || true; '
            f"sleep {settings.pause}; done; "
            f'echo "$RUNYARD_RUN_ID $RUNYARD_JOB_ATTEMPT {i} $me" >> "{effects}"'
        )
        steps.append(f"      - id: s{i}\n        run: '{script}'")
    return (
        "name: Chaos\njobs:\n  work:\n    retry: {max: 3, when: [agent-lost]}\n    steps:\n"
        + "\n".join(steps)
        + "\n"
    )


class Chaos:
    def __init__(self, system: ChaosSystem, settings: Settings) -> None:
        self.system = system
        self.settings = settings
        self.effects = system.tmp / "effects"
        self.effects.touch()
        self.agents: list[str] = []
        self.runs: dict[str, str] = {}  # run id → the phase's faults
        self.final: dict[str, dict[str, Any]] = {}
        self.recovery: dict[str, float] = {}
        self.logs_by: float | None = None  # when waiting for logs to be stored ends

    def setup(self) -> None:
        self.system.call("POST", "/api/projects", json={"name": PROJECT})
        source = pipeline(self.settings, self.effects)
        self.system.call("POST", f"/api/projects/{PROJECT}/pipelines", json={"source": source})
        for i in range(self.settings.agents):
            self.agents.append(self.system.agent(f"a{i}", PROJECT, self.settings.slots))

    # --- one burst ------------------------------------------------------------------

    def burst(self, faults: tuple[str, ...]) -> None:
        path = f"/api/projects/{PROJECT}/pipelines/Chaos/runs"
        started = [
            self.system.call("POST", path, json={"inputs": {}})["run"]
            for _ in range(self.settings.runs)
        ]
        for run_id in started:
            self.runs[run_id] = "+".join(faults)
        agents = [f for f in faults if f in AGENT_FAULTS]
        targets = {f: self.agents[i % len(self.agents)] for i, f in enumerate(agents)}
        running = self._under_way(started, list(targets.values()))
        struck = time.monotonic()
        # what each fault holds up: the jobs running on its agent, or all of them
        waiting = {
            f: {r: n for r, (on, n) in running.items() if on == targets.get(f, on)} for f in faults
        }
        for fault, jobs in waiting.items():  # nothing was under way where it struck
            if not jobs:
                self.recovery.setdefault(fault, 0.0)
        resume, at_end = self._strike(faults, targets)
        deadline = struck + RUN_TIMEOUT
        while time.monotonic() < deadline:
            now = time.monotonic()
            for when, action in list(resume.items()):
                if now >= when:
                    action()
                    del resume[when]
            self._track(started, waiting, struck)
            if not resume and all(r in self.final for r in started):
                break
            time.sleep(POLL)
        for action in [*resume.values(), *at_end]:
            action()
        for fault, jobs in waiting.items():  # never moved on
            if jobs:
                self.recovery[fault] = max(self.recovery.get(fault, 0.0), RUN_TIMEOUT)

    def _under_way(self, runs: list[str], agents: list[str]) -> dict[str, tuple[str, int]]:
        """Until a step runs on every agent about to be hit (or on any, for a service):
        then the running jobs, run → (agent part, steps finished so far)."""
        deadline = time.monotonic() + 20
        while True:
            running = self._running(runs)
            busy = {on for on, _ in running.values()}
            if (busy and all(a in busy for a in agents)) or time.monotonic() > deadline:
                return running
            time.sleep(0.1)

    def _running(self, runs: list[str]) -> dict[str, tuple[str, int]]:
        parts = {v: k for k, v in self.system.agent_ids.items()}
        found = {}
        for run_id in runs:
            run = self.system.get(f"/api/runs/{run_id}") or {"jobs": []}
            for job in run["jobs"]:
                if job["status"] == "running":
                    on = parts.get((job.get("agent") or {}).get("id", ""), "")
                    found[run_id] = (on, _finished_steps(job))
        return found

    def _strike(
        self, faults: tuple[str, ...], targets: dict[str, str]
    ) -> tuple[dict[float, Any], list[Any]]:
        """Hit every target now; what to do later (start again, resume), by when, and
        what to do once the burst is over (start an agent left down)."""
        later: dict[float, Any] = {}
        at_end = []
        now = time.monotonic()
        for n, fault in enumerate(faults):
            part = targets[fault] if fault in AGENT_FAULTS else PARTS[fault]
            if fault == "agent-stop":
                self.system.signal(part, signal.SIGSTOP)
                later[now + STOPPED + n * 1e-3] = _then(self.system.signal, part, signal.SIGCONT)
                continue
            self.system.signal(part, signal.SIGKILL)
            if fault == "agent-down":
                at_end.append(_then(self.system.restart, part))
            else:
                later[now + DOWN + n * 1e-3] = _then(self.system.restart, part)
        return later, at_end

    def _track(self, runs: list[str], waiting: dict[str, dict[str, int]], struck: float) -> None:
        for run_id in runs:
            if run_id in self.final:
                continue
            run = self.system.get(f"/api/runs/{run_id}")
            if run is None:
                continue
            if run["status"] not in ("queued", "running"):
                self.final[run_id] = run
            job = run["jobs"][0] if run["jobs"] else {}
            for fault, jobs in waiting.items():
                if run_id in jobs and (
                    run_id in self.final
                    or job.get("status") != "running"
                    or _finished_steps(job) > jobs[run_id]
                ):
                    del jobs[run_id]
                    spent = time.monotonic() - struck
                    self.recovery[fault] = max(self.recovery.get(fault, 0.0), spent)

    # --- the checks -----------------------------------------------------------------

    def result(self) -> Result:
        result = Result(unfinished=[r for r in self.runs if r not in self.final])
        effects = Counter(self.effects.read_text().splitlines())
        seen = Counter(" ".join(line.split()[:3]) for line in effects.elements())
        result.duplicates = sorted(k for k, n in seen.items() if n > 1)
        for run_id, run in self.final.items():
            for job in run["jobs"]:
                if run["status"] == "success":
                    for i in range(self.settings.steps):
                        if seen[f"{run_id} {job['attempt']} {i}"] == 0:
                            result.lost.append(f"{run_id} {job['attempt']} {i}")
                result.bad_logs += self._check_logs(run_id, job)
        result.processes = self._left_processes()
        result.workspaces = self._left_workspaces()
        for fault in dict.fromkeys(f for faults in self.settings.phases for f in faults):
            result.rows.append(self._row(fault, result))
        result.problems = _sentences(result)
        return result

    def _row(self, fault: str, result: Result) -> Row:
        runs = [r for r, faults in self.runs.items() if fault in faults.split("+")]
        ok = [r for r in runs if self.final.get(r, {}).get("status") == "success"]
        return Row(
            fault,
            len(runs),
            len(ok),
            sum(1 for d in result.duplicates if d.split()[0] in runs),
            sum(1 for lost in result.lost if lost.split()[0] in runs),
            round(self.recovery.get(fault, 0.0), 1),
            sum(1 for r in runs if _attempts(self.final.get(r)) > 1),
        )

    def _check_logs(self, run_id: str, job: dict[str, Any]) -> list[str]:
        bad = []
        for attempt in range(1, job["attempt"] + 1):
            for step in job["steps"]:
                path = f"/api/runs/{run_id}/jobs/{job['key']}/steps/{step['id']}/logs"
                last = attempt == job["attempt"] and step["status"] not in ("queued", "running")
                page = self._stored_log(f"{path}?attempt={attempt}&limit=10000", last)
                lines = [m for line in page["lines"] if (m := LINE.match(line["text"]))]
                done = last and step["status"] == "success"
                why = _log_problem(lines, self.settings.lines if done else None)
                if why:
                    bad.append(f"{run_id} {job['key']} attempt {attempt} {step['id']}: {why}")
        return bad

    def _stored_log(self, path: str, ended: bool) -> dict[str, Any]:
        """A step's stored log; for a step that ended, once its last line is stored (the
        collector, restarted, may still be catching up), LOG_WAIT s at most in all."""
        if self.logs_by is None:
            self.logs_by = time.monotonic() + LOG_WAIT
        while True:
            page: dict[str, Any] = self.system.get(path) or {"lines": [], "ended": False}
            if not ended or page["ended"] or time.monotonic() > self.logs_by:
                return page
            time.sleep(0.2)

    def _left_processes(self) -> list[str]:
        """Processes of our steps still running a few seconds after every run ended."""
        deadline = time.monotonic() + 5
        while True:
            left = []
            for proc in psutil.process_iter(["pid", "cmdline"]):
                try:
                    run = proc.environ().get("RUNYARD_RUN_ID")
                except (psutil.Error, OSError):
                    continue
                if run in self.runs:
                    left.append(f"{proc.info['pid']} {' '.join(proc.info['cmdline'] or [])}")
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def _left_workspaces(self) -> list[str]:
        """Workspaces (`work/<run>/…`) of our runs still there, every run having ended."""
        deadline = time.monotonic() + 5
        while True:
            left = [
                str(folder)
                for directory in self.system.agent_dirs.values()
                for folder in (directory / "work").glob("*")
                if folder.name in self.runs
            ]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)


def _then(action: Any, *args: Any) -> Any:
    return lambda: action(*args)


def _attempts(run: dict[str, Any] | None) -> int:
    return max((job["attempt"] for job in (run or {}).get("jobs", [])), default=0)


def _finished_steps(job: dict[str, Any]) -> int:
    return sum(1 for s in job.get("steps", []) if s["status"] not in ("queued", "running"))


def _log_problem(lines: list[re.Match[str]], complete: int | None) -> str | None:
    pids = {m[1] for m in lines}
    numbers = [int(m[2]) for m in lines]
    if len(pids) > 1:
        return f"lines of {len(pids)} executions (tokens {', '.join(sorted(pids))})"
    if numbers != list(range(1, len(numbers) + 1)):
        return f"lines out of order or repeated: {numbers}"
    if complete is not None and len(numbers) != complete:
        return f"{len(numbers)} of {complete} lines"
    return None


def _sentences(result: Result) -> list[str]:
    out = [f"run {r} never ended" for r in result.unfinished]
    out += [f"side effect twice within an attempt: {d}" for d in result.duplicates]
    out += [f"side effect lost: {lost}" for lost in result.lost]
    out += [f"stored log: {b}" for b in result.bad_logs]
    out += [f"step process left running: {p}" for p in result.processes]
    out += [f"workspace left behind: {w}" for w in result.workspaces]
    return out


def run_chaos(tmp: Path, settings: Settings) -> Result:
    with ChaosSystem(tmp) as system:
        chaos = Chaos(system, settings)
        chaos.setup()
        for faults in settings.phases:
            chaos.burst(faults)
            for part in chaos.agents:  # every agent back before the next burst
                _back(system, part)
        return chaos.result()


def _back(system: ChaosSystem, part: str) -> None:
    system.restart(part)
    system.wait(part, lambda: system.agent_online(part), 60)


def report(result: Result, json_path: Path | None) -> None:
    print(
        f"{'fault':<16}{'runs':>6}{'succeeded':>11}{'duplicate effects':>19}"
        f"{'lost effects':>14}{'recovery s':>12}{'retried':>9}"
    )
    for row in result.rows:
        print(
            f"{row.fault:<16}{row.runs:>6}{row.succeeded:>11}{row.duplicate_effects:>19}"
            f"{row.lost_effects:>14}{row.recovery_s:>12.1f}{row.retried:>9}"
        )
    for problem in result.problems[:40]:
        print(f"  {problem}")
    if len(result.problems) > 40:
        print(f"  … and {len(result.problems) - 40} more")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(asdict(result), indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per burst")
    parser.add_argument("--steps", type=int, default=5, help="steps per run")
    parser.add_argument("--lines", type=int, default=10, help="lines per step")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order")
    parser.add_argument("--repeat", type=int, default=1, help="bursts per fault")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    settings = Settings(
        runs=args.runs,
        steps=args.steps,
        lines=args.lines,
        phases=tuple((f,) for f in faults for _ in range(args.repeat)),
    )
    with tempfile.TemporaryDirectory(prefix="runyard-chaos-") as tmp:
        result = run_chaos(Path(tmp), settings)
    report(result, args.json)


if __name__ == "__main__":
    main()
