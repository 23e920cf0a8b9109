"""What a step's processes can see of the agent's machine (Linux user namespaces).

A step runs as the agent's user, so without help it could read the agent's token
(`agent.json`), forge messages into its spool, rewrite cached actions other projects
run, plant a `~/.gitconfig` the agent's own git then obeys, read other jobs'
workspaces, or — on the machine `runyard up` runs on — the server's keys and
passwords. Each job's steps are started by a spawner process (agent/spawner.py) that,
when the job is claimed, enters a new user and mount namespace where:

- the whole file system is read-only, except this job's workspace, `/tmp` and an
  empty `/dev/shm` of the step's own; steps get `HOME=<workspace>/.runyard/home`;
- every hidden path (the agent's credentials, spool and state, well-known credential
  files in the user's home such as `~/.ssh` and `~/.netrc`, the user's runtime
  directory `/run/user/<uid>` with its sockets, and the paths given with `--hide`) is
  covered by an empty read-only tmpfs (a file by /dev/null);
- the agent's directory shows only `work/` and `cache/` (its credentials, spool and
  state are under an empty tmpfs, so a file the agent renames over `agent.json`
  during a job stays hidden too); `work/` shows only this job's own workspace; the
  action cache is read-only;
- it then enters a second, nested pair of namespaces, which locks those mounts (a
  less privileged namespace cannot unmount them to look underneath) and maps the
  agent's own uid back, so the program runs as the same user with no capabilities;
- other processes' `/proc/<pid>/environ`, `mem` and `root` are out of reach, since
  they are in a more privileged user namespace (ptrace access is refused);
- its steps are in a PID namespace of the job's own (its init is a child of the job's
  spawner, agent/namespaces.py), with a `/proc` of its own: they see and signal only
  the job's processes, and the kernel kills what is left in it when the job ends; the
  kernel's settings there (`/proc/sys`, `sysrq-trigger`, …) are read-only, also to the
  steps of an agent run as root.

Not covered: other processes of the same user outside the agent can signal the agent
and its steps (run agents as a user of their own, apart from the server's); a hidden
file outside the agent's directory replaced by rename during a job shows through to
that job (docs/security.md).
Where user namespaces are not allowed (some hardened kernels), `probe()` says why and
steps run without this isolation; `runyard agent start` logs that once.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import namespaces

# Credentials that commonly sit in a user's home; steps must not read them.
HOME_SECRETS = (
    ".ssh", ".netrc", ".git-credentials", ".config/git/credentials", ".config/runyard",
    ".docker", ".aws", ".azure", ".config/gcloud", ".kube", ".gnupg", ".pypirc", ".npmrc",
    ".config/gh", ".password-store",
)  # fmt: skip


def runtime_dirs() -> list[Path]:
    """The user's runtime directories: the sockets of its session bus, systemd --user
    manager, keyring and agents (ssh, gpg) that a step must not talk to."""
    found = {Path(f"/run/user/{os.getuid()}")}
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or "/run")
    if runtime.is_absolute() and len(runtime.parts) > 2:  # never all of /tmp, /run, /
        found.add(runtime)
    return sorted(found)


class Sandbox:
    """Made once per agent: what each job's sandbox hides (`plan`), and whether this
    machine can build one at all (`probe`)."""

    def __init__(self, agent_dir: Path, hidden: Sequence[Path] = ()) -> None:
        self.agent = agent_dir
        self.work = agent_dir / "work"
        self.cache = agent_dir / "cache"
        for path in (self.work, self.cache):
            path.mkdir(parents=True, exist_ok=True)
        own = [agent_dir / "agent.json", agent_dir / "spool", agent_dir / "state"]
        home = [Path.home() / p for p in HOME_SECRETS]
        runtime = [p for p in runtime_dirs() if not agent_dir.resolve().is_relative_to(p)]
        self.hidden = [p.resolve() for p in [*own, *home, *runtime, *hidden]]
        self.enabled = True

    def probe(self) -> str | None:
        """None when steps can be isolated here, else the reason they cannot."""
        workspace = self.work / ".probe"
        workspace.mkdir(exist_ok=True)
        plan = self.plan(workspace)
        try:
            subprocess.run(
                ["/bin/true"], check=True, preexec_fn=lambda: namespaces.enter(plan), close_fds=True
            )
        except (subprocess.SubprocessError, OSError) as exc:
            self.enabled = False
            return str(exc)
        return None

    def env(self, workspace: Path) -> dict[str, str]:
        """Where a step writes what it would write to its home and temp directories."""
        if not self.enabled:
            return {}
        home = workspace / ".runyard" / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {"HOME": str(home)}

    def base_plan(self) -> dict[str, Any]:
        """What every job's sandbox has in common (agent/namespaces.py builds it)."""
        return {
            "agent": str(self.agent.resolve()),
            "work": str(self.work.resolve()),
            "cache": str(self.cache.resolve()),
            "hidden": [str(p) for p in self.hidden],
            "uid": os.getuid(),
            "gid": os.getgid(),
        }

    def plan(self, workspace: Path) -> dict[str, Any]:
        """What `namespaces.enter` needs to build the sandbox of one job's workspace."""
        base, own = self.base_plan(), workspace.resolve()
        if not str(own).startswith(base["work"] + "/"):
            raise ValueError(f"a step's workspace must be inside {base['work']}: {own}")
        return base | {"workspace": str(own)}
