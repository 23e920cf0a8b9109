"""An agent's identity and where it connects, kept in `<agent dir>/agent.json`
(mode 0600: the token is a credential)."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path

from runyard.settings import AgentSettings

FILE = "agent.json"
# The only RUNYARD_* settings an agent is given from its launcher's environment (its
# settings, and the log level); nothing else of theirs (a server's URLs, passwords and
# keys stay with the server).
AGENT_SETTINGS = AgentSettings.variables()


def agent_environment(environ: dict[str, str]) -> dict[str, str]:
    """`environ` without any RUNYARD_* variable an agent has no business seeing."""
    return {k: v for k, v in environ.items() if not k.startswith("RUNYARD_") or k in AGENT_SETTINGS}


def fingerprint(pem: str) -> str:
    """`SHA256:AB:CD:…` of a PEM certificate (as `openssl x509 -fingerprint` shows it)."""
    der = ssl.PEM_cert_to_DER_cert(pem.strip())
    return "SHA256:" + ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


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
    # PEM of the CA that signed the server's TLS certificate (a self-signed one made by
    # `runyard up --public`); empty to trust the system's CAs.
    ca: str = ""

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
            return cls(
                data["id"], data["name"], data["token"], data["nats_url"], data.get("ca", "")
            )
        except FileNotFoundError:
            raise ConfigError(
                f"no agent in {directory}: run `runyard agent create --name NAME` first"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a valid agent file: {exc}") from None
