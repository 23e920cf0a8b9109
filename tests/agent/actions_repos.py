"""Bare git repositories holding DataTorch-style actions, reached through file:// URLs."""

from __future__ import annotations

import subprocess
from pathlib import Path

ADD_ACTION = """name: Python Add
description: Example running a python to add two numbers.
inputs:
  a: {type: integer, required: true, description: First number}
  b: {type: integer, required: true, description: Second number}
outputs:
  sum: {type: integer, description: Value of a and b added together}
runs:
  using: python
  main: add.py
"""

ADD_PY = """import datatorch

if __name__ == "__main__":
    inputs = datatorch.get_inputs()
    a: int = inputs.get('a')
    b: int = inputs.get('b')
    datatorch.set_output('sum', a + b)
"""

AVERAGE_ACTION = """name: Python Average
inputs:
  a: {type: float, required: true}
  b: {type: float, required: true}
outputs:
  average: {type: float}
runs:
  using: python
  main: average.py
"""

AVERAGE_PY = """from datatorch import get_input, set_output

set_output('average', (get_input('a') + get_input('b')) / 2)
"""

SHELL_ACTION = """name: Greet
inputs:
  who: {type: string, default: world}
runs:
  using: shell
  main: greet.sh
"""

GREET_SH = """echo "hello $INPUT_WHO"
echo "greeting=hello $INPUT_WHO" >> "$RUNYARD_OUTPUT"
"""


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
            "PATH": "/usr/bin:/bin",
        },
    )


def make_action_repo(base: Path, name: str, files: dict[str, str], tag: str = "v1") -> Path:
    """A bare repository at `base/name` with `files` committed and tagged."""
    work = base / "src" / name
    work.mkdir(parents=True)
    for path, text in files.items():
        (work / path).write_text(text)
    _git("init", "-q", "-b", "main", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "action", cwd=work)
    _git("tag", tag, cwd=work)
    bare = base / name
    bare.parent.mkdir(parents=True, exist_ok=True)
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=base)
    return bare


def datatorch_actions(base: Path) -> str:
    """Create datatorch-actions/add, /average and acme/greet; the RUNYARD_ACTIONS_BASE."""
    make_action_repo(
        base, "datatorch-actions/add", {"action-datatorch.yaml": ADD_ACTION, "add.py": ADD_PY}
    )
    make_action_repo(
        base,
        "datatorch-actions/average",
        {"action-datatorch.yaml": AVERAGE_ACTION, "average.py": AVERAGE_PY},
    )
    make_action_repo(
        base, "acme/greet", {"action-datatorch.yaml": SHELL_ACTION, "greet.sh": GREET_SH}
    )
    return f"file://{base}"
