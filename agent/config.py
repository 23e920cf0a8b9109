"""An agent's identity and where it connects, kept in `<agent dir>/agent.json`
(mode 0600: the token is a credential)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "agent.json"


class ConfigError(RuntimeError):
    pass


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "runyard" / "agent"


@dataclass(frozen=True)
class AgentConfig:
    id: str
    name: str
    token: str
    nats_url: str

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out, indent=2)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory: Path) -> AgentConfig:
        path = directory / FILE
        try:
            data = json.loads(path.read_text())
            return cls(data["id"], data["name"], data["token"], data["nats_url"])
        except FileNotFoundError:
            raise ConfigError(
                f"no agent in {directory}: run `runyard agent create --name NAME` first"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a valid agent file: {exc}") from None
