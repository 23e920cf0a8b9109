"""Finding actions: `org/name@tag`, `{name, tag, git}` or `./folder`, cloned once per
agent into a cache keyed by the resolved commit.

`org/name@tag` is looked up first in the folder named by `RUNYARD_ACTIONS_DIR`, when
the agent has one (`<dir>/org/name@tag/`, a plain copy, no git: how `runyard up`'s local
agent runs the examples offline), then cloned from `RUNYARD_ACTIONS_BASE`.

The cache is safe for concurrent steps (and processes): a commit is cloned into a private
temporary folder under a file lock and renamed into place only when complete, so a reader
sees a whole action or none.
"""

from __future__ import annotations

import asyncio
import fcntl
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from agent import git
from runyard.git_inputs import ref_problem
from runyard.settings import ACTIONS_BASE, AgentSettings
from schemas.action import ACTION_FILES, Action
from schemas.pipeline import ActionRef

DEFAULT_BASE = ACTIONS_BASE
BASE_SETTING = "RUNYARD_ACTIONS_BASE"
DIR_SETTING = "RUNYARD_ACTIONS_DIR"
MIRROR_HELP = "docs/actions.md#offline-and-mirrors"
# DataTorch publishes its own actions under this organisation.
ORG_ALIASES = {"datatorch": "datatorch-actions"}


class ActionError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadedAction:
    action: Action
    path: Path  # the folder holding the action file
    commit: str | None  # None for a folder of the pipeline's repository


def action_url(ref: ActionRef, base: str = DEFAULT_BASE) -> str:
    if ref.git:
        return ref.git
    base = base or DEFAULT_BASE
    org, _, name = ref.name.partition("/")
    return f"{base.rstrip('/')}/{ORG_ALIASES.get(org, org)}/{name}"


def copied_action(ref: ActionRef, root: str | None = None) -> Path | None:
    """The folder holding a copy of `org/name@tag` under `root` (the agent's
    RUNYARD_ACTIONS_DIR), if any (an action with its own `git` URL is always cloned)."""
    if not root or ref.git or (ref.tag and ref_problem(ref.tag)):
        return None
    top = Path(root).resolve()
    folder = (top / (f"{ref.name}@{ref.tag}" if ref.tag else ref.name)).resolve()
    return folder if folder.is_relative_to(top) and folder.is_dir() else None


def unreachable(label: str, url: str, reason: str) -> str:
    """The sentence for an action git could not fetch: which URL, why, what to do."""
    host = urlsplit(url).hostname or url
    return (
        f"action '{label}' could not be fetched from {url}: {reason}. If this agent "
        f"cannot reach {host}, point {BASE_SETTING} on the agent at a mirror of the "
        f"actions' repositories, or {DIR_SETTING} at a folder of copies ({MIRROR_HELP})"
    )


def load_action_file(folder: Path) -> Action:
    for name in ACTION_FILES:
        path = folder / name
        if path.is_file():
            break
    else:
        raise ActionError(f"no {ACTION_FILES[0]} in {folder}")
    try:
        return Action.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise ActionError(
            f"{path.name} is not a valid action file: {' '.join(first[:3])}"
        ) from None


class ActionCache:
    def __init__(self, root: Path, base: str | None = None, copies: str | None = None) -> None:
        """`base` is where actions are cloned from (RUNYARD_ACTIONS_BASE), `copies` a
        folder of copies ('' for none: RUNYARD_ACTIONS_DIR); either one not given is
        the process's setting, read now (the agent passes both, from its start)."""
        given = base is not None and copies is not None
        settings = AgentSettings() if given else AgentSettings.from_env()
        self.root = root
        self.base = settings.actions_base if base is None else base
        self.copies = (settings.actions_dir or "") if copies is None else copies
        self._local = asyncio.Lock()  # one clone at a time per process; flock across processes

    def commit_dir(self, commit: str) -> Path:
        return self.root / "commits" / commit

    async def load(self, ref: ActionRef, workspace: Path) -> LoadedAction:
        if ref.is_local:
            folder = (workspace / ref.name).resolve()
            if not folder.is_relative_to(workspace.resolve()):
                raise ActionError(f"action '{ref.name}' is outside the job workspace")
            return LoadedAction(load_action_file(folder), folder, None)
        if copy := copied_action(ref, self.copies):
            return LoadedAction(load_action_file(copy), copy, None)
        url = action_url(ref, self.base)
        try:
            fetch_ref, commit = await git.resolve(url, ref.tag)
            folder = await self._ensure(url, fetch_ref, commit)
        except git.GitFailed as exc:
            label = f"{ref.name}@{ref.tag}" if ref.tag else ref.name
            raise ActionError(unreachable(label, url, str(exc))) from None
        except git.GitError as exc:
            raise ActionError(f"action '{ref.name}': {exc}") from None
        return LoadedAction(load_action_file(folder), folder, commit)

    async def _ensure(self, url: str, fetch_ref: str, commit: str) -> Path:
        final = self.commit_dir(commit)
        if final.exists():
            return final
        async with self._local:
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
            with (self.root / "locks" / f"{commit}.lock").open("w") as lock:
                await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
                if final.exists():  # another process cloned it while we waited
                    return final
                (self.root / "tmp").mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(dir=self.root / "tmp"))
                try:
                    got = await git.fetch_checkout(url, fetch_ref, tmp)
                    if got != commit:
                        raise git.GitError(f"fetched {got[:12]}, expected {commit[:12]}")
                    final.parent.mkdir(parents=True, exist_ok=True)
                    tmp.rename(final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        return final
