"""Each process's settings (runyard/settings.py): read from the environment once, a bad
value ends the process with one line that names the variable (no traceback), and every
variable is in docs/deployment.md's table."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from agent.config import AGENT_SETTINGS, agent_environment
from runyard.settings import (
    AgentSettings,
    DispatcherSettings,
    LogsSettings,
    SchedulerSettings,
    ServiceSettings,
    Settings,
    SettingsError,
    TriggerSettings,
    WebSettings,
)
from schemas import subjects
from services import bus
from tests.conftest import ROOT

KINDS: list[type[Settings]] = [
    ServiceSettings,
    DispatcherSettings,
    WebSettings,
    TriggerSettings,
    LogsSettings,
    SchedulerSettings,
    AgentSettings,
]


def test_defaults_are_the_documented_ones() -> None:
    service = ServiceSettings.from_env({})
    assert (service.log, service.nats_ca, service.nats_replicas) == ("INFO", None, 1)
    assert WebSettings.from_env({}).max_bytes == 2 << 20
    assert TriggerSettings.from_env({}).max_bytes == 5 << 20
    logs = LogsSettings.from_env({})
    assert (logs.cap, logs.retention) == (64 << 20, subjects.RETENTION)
    assert SchedulerSettings.from_env({}).grace == 300
    agent = AgentSettings.from_env({})
    assert (agent.actions_base, agent.actions_dir) == ("https://github.com/", None)
    assert agent.allow_file_urls is False
    dispatcher = DispatcherSettings.from_env({})
    assert (dispatcher.nats_auth_url, dispatcher.nats_issuer_seed) == (None, None)


def test_values_are_read_and_an_empty_one_is_unset() -> None:
    env = {
        "RUNYARD_LOG": "debug",
        "RUNYARD_LOG_CAP": "1024",
        "RUNYARD_LOG_RETENTION": "",
        "RUNYARD_NATS_REPLICAS": "3",
        "RUNYARD_WEB_MAX_BYTES": "99",  # not the collector's: ignored
    }
    logs = LogsSettings.from_env(env)
    assert (logs.log, logs.cap, logs.retention, logs.nats_replicas) == (
        "DEBUG",
        1024,
        subjects.RETENTION,
        3,
    )
    assert SchedulerSettings.from_env({"RUNYARD_SCHEDULE_GRACE": "12.5"}).grace == 12.5


@pytest.mark.parametrize(
    ("kind", "variable", "value", "why"),
    [
        (LogsSettings, "RUNYARD_LOG_CAP", "64MB", "valid integer"),
        (LogsSettings, "RUNYARD_LOG_RETENTION", "0", "greater than or equal to 1"),
        (WebSettings, "RUNYARD_WEB_MAX_BYTES", "-1", "greater than or equal to 1"),
        (TriggerSettings, "RUNYARD_HOOK_MAX_BYTES", "lots", "valid integer"),
        (SchedulerSettings, "RUNYARD_SCHEDULE_GRACE", "5m", "valid number"),
        (ServiceSettings, "RUNYARD_LOG", "loud", "not a log level"),
        (ServiceSettings, "RUNYARD_NATS_REPLICAS", "7", "less than or equal to 5"),
        (ServiceSettings, "RUNYARD_NATS_CA", "/no/such/ca.pem", "does not point to a file"),
        (AgentSettings, "RUNYARD_ALLOW_FILE_URLS", "maybe", "not one of 1, true, yes"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_the_variable(
    kind: type[Settings], variable: str, value: str, why: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        kind.from_env({variable: value})
    assert raised.value.message.startswith(f"{variable} has value {value!r}: ")
    assert why in raised.value.message
    assert "\n" not in raised.value.message


def test_every_bad_value_is_named_and_a_secret_is_not_repeated() -> None:
    seed = "SAAGNOTAREALSEEDATALL"
    with pytest.raises(SettingsError) as raised:
        DispatcherSettings.from_env({"RUNYARD_LOG": "x", "RUNYARD_NATS_REPLICAS": "0"})
    assert "RUNYARD_LOG has value 'x'" in raised.value.message
    assert "RUNYARD_NATS_REPLICAS has value '0'" in raised.value.message
    settings = DispatcherSettings.from_env({"RUNYARD_NATS_ISSUER_SEED": seed})
    assert settings.nats_issuer_seed == seed
    assert seed not in repr(settings)


@pytest.mark.parametrize(
    ("value", "allowed"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("no", False), ("", False)],
)
def test_local_repositories_only_when_allowed(value: str, allowed: bool) -> None:
    settings = AgentSettings.from_env({"RUNYARD_ALLOW_FILE_URLS": value})
    assert settings.allow_file_urls is allowed


def test_an_agent_is_given_its_own_settings_and_no_servers() -> None:
    assert set(AgentSettings.variables()) <= set(AGENT_SETTINGS)
    given = agent_environment(
        {"RUNYARD_ACTIONS_DIR": "/a", "RUNYARD_SECRET_KEY": "k", "RUNYARD_LOG_CAP": "1"}
    )
    assert given == {"RUNYARD_ACTIONS_DIR": "/a"}
    assert bus.REPLICAS_SETTING in ServiceSettings.variables()


def test_every_setting_is_in_the_deployment_table() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    documented = set(re.findall(r"^\| `(RUNYARD_[A-Z_]+)` \|", text, re.MULTILINE))
    for kind in KINDS:
        missing = set(kind.variables()) - documented
        assert not missing, f"{kind.__name__}: {sorted(missing)} not in docs/deployment.md"


def test_a_service_with_a_bad_setting_exits_with_one_line() -> None:
    env = {**os.environ, "RUNYARD_LOG_CAP": "64MB"}
    done = subprocess.run(
        [sys.executable, "-m", "runyard", "serve", "logs", "--nats-url", "nats://127.0.0.1:1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: RUNYARD_LOG_CAP has value '64MB': "), done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
