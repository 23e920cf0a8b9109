"""Running one resolved step in a job workspace: `run:` scripts and actions.

Every step is its own process group with its own environment (nothing leaks between
steps), secrets are masked before a line leaves the runner, and outputs are read from
`::name::<json>` lines and the `$RUNYARD_OUTPUT` file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import outputs
from agent.action_inputs import ActionInputError, check_inputs
from agent.actions import ActionCache, ActionError, LoadedAction
from agent.process import LineSink, Spawn, Throttle, Tracker, run_process, spawn_here
from agent.sandbox import Sandbox
from runyard.engine.masking import Masker
from runyard.engine.text import to_text
from schemas.messages import ResolvedStep
from schemas.status import Status

COMPAT = Path(__file__).resolve().parent / "compat"
SCRIPT_SUFFIX = {"bash": ".sh", "sh": ".sh", "python": ".py"}


@dataclass
class StepResult:
    status: Status
    exit_code: int | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0

    def report(self) -> dict[str, Any]:
        """The fields a step's end is reported with (engine event and wire message)."""
        return dataclasses.asdict(self)


@functools.cache
def _datatorch_installed() -> bool:
    return importlib.util.find_spec("datatorch") is not None


ADD_MASK = "::add-mask::"  # a step marks a value secret for the rest of its output


def base_env() -> dict[str, str]:
    """The agent's environment without its own settings (which may hold credentials)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}


def script_argv(shell: str, path: Path) -> list[str]:
    if shell == "python":
        return [sys.executable, "-u", str(path)]
    if shell == "sh":
        return ["sh", "-e", str(path)]
    return ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(path)]


def _inputs_env(inputs: dict[str, Any]) -> dict[str, str]:
    return {f"INPUT_{name.upper().replace('-', '_')}": to_text(v) for name, v in inputs.items()}


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class StepRunner:
    def __init__(
        self, actions: ActionCache, cache_dir: Path, sandbox: Sandbox | None = None
    ) -> None:
        self.actions = actions
        self.cache_dir = cache_dir
        self.sandbox = sandbox  # the agent's; local mode runs steps as they are
        self._docker: bool | None = None

    async def run(
        self,
        step: ResolvedStep,
        workspace: Path,
        sink: LineSink,
        cancel: asyncio.Event | None = None,
        throttle: Throttle | None = None,
        tracker: Tracker | None = None,
        spawn: Spawn = spawn_here,
    ) -> StepResult:
        """`spawn` and `tracker` (the agent's) start the step in its job's sandbox and
        follow its processes so they die with the agent."""
        started = time.time()
        result = await self._run(step, workspace, sink, cancel, throttle, tracker, spawn)
        result.started_at, result.finished_at = started, time.time()
        return result

    async def _run(
        self,
        step: ResolvedStep,
        workspace: Path,
        sink: LineSink,
        cancel: asyncio.Event | None,
        throttle: Throttle | None,
        tracker: Tracker | None,
        spawn: Spawn,
    ) -> StepResult:
        mask = Masker(step.mask)
        found: dict[str, Any] = {}

        def emit(stream: str, line: str) -> None:
            if line.startswith(ADD_MASK):
                mask.add(line.removeprefix(ADD_MASK).strip())
                return  # the command itself would show the value
            if stream == "out" and (output := outputs.parse_line(line)):
                found[output[0]] = output[1]
            sink(stream, mask(line))

        meta = workspace / ".runyard"
        meta.mkdir(parents=True, exist_ok=True)
        # unique per call: matrix instances and parallel jobs may share one workspace
        unique = f"{step.id}-{uuid.uuid4().hex[:8]}"
        output_file = meta / f"output-{unique}"
        output_file.write_text("")
        env = {
            **base_env(),
            **step.env,
            "RUNYARD_OUTPUT": str(output_file),
            "RUNYARD_WORKSPACE": str(workspace),
            **(self.sandbox.env(workspace) if self.sandbox else {}),
        }
        cwd = (workspace / step.working_directory) if step.working_directory else workspace
        if not cwd.is_dir():
            return StepResult(Status.FAILURE, error=f"working directory '{cwd}' does not exist")
        cache_file = None
        if step.script is not None:
            script = meta / f"step-{unique}{SCRIPT_SUFFIX.get(step.shell, '.sh')}"
            script.write_text(step.script)
            argv = script_argv(step.shell, script)
        else:
            prepared = await self._action(step, workspace, env, emit)
            if isinstance(prepared, StepResult):
                return prepared
            argv, cache_file = prepared
        done = await run_process(
            argv,
            cwd=cwd,
            env=env,
            sink=emit,
            timeout=step.timeout,
            cancel=cancel,
            throttle=throttle,
            spawn=spawn,
            tracker=tracker,
        )
        found.update(outputs.read_file(output_file))
        found = mask.data(found)  # outputs are shown and passed on: hide secrets there too
        if cache_file and done.status == Status.SUCCESS:
            _write_atomically(cache_file, json.dumps(found))
        error = {Status.TIMED_OUT: "the step timed out", Status.CANCELLED: "cancelled"}.get(
            done.status
        )
        if done.status == Status.FAILURE and error is None:
            error = f"exited with status {done.exit_code}"
        return StepResult(done.status, done.exit_code, found, error)

    # --- actions --------------------------------------------------------------------

    async def _action(
        self, step: ResolvedStep, workspace: Path, env: dict[str, str], emit: LineSink
    ) -> tuple[list[str], Path | None] | StepResult:
        """The command for an action step (env is updated), or the step's result when
        it ends before running anything (bad action, bad inputs, cached outputs)."""
        assert step.action is not None
        try:
            loaded = await self.actions.load(step.action, workspace)
            inputs = check_inputs(loaded.action, step.inputs)
        except (ActionError, ActionInputError) as exc:
            emit("err", str(exc))  # the step's log says it too, not only its status line
            return StepResult(Status.FAILURE, error=str(exc))
        cache_file = self._cache_file(loaded, inputs) if step.cache or loaded.action.cache else None
        if cache_file and cache_file.exists():
            emit("out", f"outputs reused from an identical earlier call ({cache_file.stem[:12]})")
            return StepResult(Status.SUCCESS, 0, json.loads(cache_file.read_text()))
        env.update(_inputs_env(inputs))
        runs = loaded.action.runs
        main = str(loaded.path / runs.main) if runs.main else ""
        payload = json.dumps(inputs)
        if runs.using == "python":
            if not _datatorch_installed():
                env["PYTHONPATH"] = os.pathsep.join(
                    filter(None, [str(COMPAT), env.get("PYTHONPATH")])
                )
            argv = [sys.executable, "-u", main, payload]
        elif runs.using == "node":
            argv = ["node", main, payload]
        elif runs.using in ("shell", "script"):
            argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail", main]
        elif runs.using in ("cmd", "commandline"):
            argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", runs.main or ""]
        else:
            if not await self._docker_available():
                return StepResult(Status.FAILURE, error="docker is not available on this agent")
            argv = [
                "docker",
                "run",
                "--rm",
                "-v",
                f"{workspace}:/workspace",
                "-w",
                "/workspace",
                *(f"--env={k}" for k in _inputs_env(inputs)),
                runs.image or main,
                *runs.args,
            ]
        return argv, cache_file

    def _cache_file(self, loaded: LoadedAction, inputs: dict[str, Any]) -> Path | None:
        if loaded.commit is None:  # a folder of the repository changes with every commit
            return None
        key = hashlib.sha256(
            json.dumps([loaded.commit, inputs], sort_keys=True, default=str).encode()
        ).hexdigest()
        return self.cache_dir / "outputs" / f"{key}.json"

    async def _docker_available(self) -> bool:
        if self._docker is None:
            docker = shutil.which("docker")
            if docker is None:
                self._docker = False
            else:
                proc = await asyncio.create_subprocess_exec(
                    docker,
                    "info",
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                try:
                    self._docker = await asyncio.wait_for(proc.wait(), 10) == 0
                except TimeoutError:
                    proc.kill()
                    self._docker = False
        return self._docker
