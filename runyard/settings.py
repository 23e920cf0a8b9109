"""Each process's settings: one typed model per kind of process, read once from the
environment when the process starts (`from_env`) and passed on from there.

Every field is named by its variable (its alias); an empty variable counts as unset. A
value that cannot be used ends the process with `SettingsError`, a sentence that names
the variable, its value and what is wrong (never a traceback). docs/deployment.md lists
every variable ("Settings")."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Annotated, Any, Self

import click
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, FilePath, ValidationError

from schemas.subjects import RETENTION

# Defaults also used where a library caller (a test, local mode) passes nothing.
LOG_LEVEL = "INFO"
WEB_MAX_BYTES = 2 << 20  # bytes of one API request
HOOK_MAX_BYTES = 5 << 20  # bytes of one webhook delivery
LOG_CAP = 64 << 20  # bytes of log kept per step
LOG_RETENTION = int(RETENTION)  # seconds logs are kept
SCHEDULE_GRACE = 300.0  # seconds a missed schedule tick may be late and still fire
ACTIONS_BASE = "https://github.com/"
SECRET = "secret"  # a field whose value an error must not repeat


class SettingsError(click.ClickException):
    """A setting whose value cannot be used; the message names the variable. A click
    exception, so a command it ends (every process is one) prints it as one line."""


def _level(value: Any) -> str:
    level = str(value).strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError("not a log level (DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    return level


def _yes_no(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("1", "true", "yes"):
        return True
    if word in ("0", "false", "no"):
        return False
    raise ValueError("not one of 1, true, yes (on) or 0, false, no (off)")


Level = Annotated[str, BeforeValidator(_level)]
YesNo = Annotated[bool, BeforeValidator(_yes_no)]


class Settings(BaseModel):
    """The variables of one kind of process (the fields' aliases)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        return tuple(f.alias for f in cls.model_fields.values() if f.alias)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """This kind's settings from `environ` (default: the process's environment)."""
        env = os.environ if environ is None else environ
        found = {name: env[name] for name in cls.variables() if env.get(name, "").strip()}
        try:
            return cls.model_validate(found)
        except ValidationError as exc:
            raise SettingsError(cls._explain(exc, found)) from None

    @classmethod
    def _explain(cls, exc: ValidationError, found: Mapping[str, str]) -> str:
        secret = {
            f.alias
            for f in cls.model_fields.values()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get(SECRET)
        }
        lines = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            reason = str(error["msg"]).removeprefix("Value error, ")
            reason = reason[:1].lower() + reason[1:]
            shown = "(hidden)" if name in secret else repr(found.get(name, ""))
            lines.append(f"{name} has value {shown}: {reason}")
        return "; ".join(lines)


class ServiceSettings(Settings):
    """What every service (`runyard serve …`) reads; its NATS and Valkey URLs are the
    command's options (`--nats-url` / `RUNYARD_NATS_URL`, `--redis-url` /
    `RUNYARD_REDIS_URL`)."""

    log: Level = Field(LOG_LEVEL, alias="RUNYARD_LOG")
    nats_ca: FilePath | None = Field(None, alias="RUNYARD_NATS_CA")
    nats_replicas: int = Field(1, ge=1, le=5, alias="RUNYARD_NATS_REPLICAS")


class DispatcherSettings(ServiceSettings):
    nats_auth_url: str | None = Field(None, alias="RUNYARD_NATS_AUTH_URL")
    nats_sys_url: str = Field("", alias="RUNYARD_NATS_SYS_URL")
    nats_issuer_seed: str | None = Field(
        None, alias="RUNYARD_NATS_ISSUER_SEED", repr=False, json_schema_extra={SECRET: True}
    )


class WebSettings(ServiceSettings):
    max_bytes: int = Field(WEB_MAX_BYTES, ge=1, alias="RUNYARD_WEB_MAX_BYTES")


class TriggerSettings(ServiceSettings):
    max_bytes: int = Field(HOOK_MAX_BYTES, ge=1, alias="RUNYARD_HOOK_MAX_BYTES")


class LogsSettings(ServiceSettings):
    cap: int = Field(LOG_CAP, ge=1, alias="RUNYARD_LOG_CAP")
    retention: int = Field(LOG_RETENTION, ge=1, alias="RUNYARD_LOG_RETENTION")


class SchedulerSettings(ServiceSettings):
    grace: float = Field(SCHEDULE_GRACE, ge=0, alias="RUNYARD_SCHEDULE_GRACE")


class AgentSettings(Settings):
    """What an agent (`runyard agent start`, and local mode's runner) reads; the rest
    of its configuration is its agent file and command line."""

    log: Level = Field(LOG_LEVEL, alias="RUNYARD_LOG")
    actions_base: str = Field(ACTIONS_BASE, alias="RUNYARD_ACTIONS_BASE")
    actions_dir: str | None = Field(None, alias="RUNYARD_ACTIONS_DIR")
    allow_file_urls: YesNo = Field(False, alias="RUNYARD_ALLOW_FILE_URLS")
