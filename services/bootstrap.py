"""What `runyard up` sets up in the store before anything runs: the admin API key (kept
in the CLI's config, so the CLI is logged in), the `examples` project with the example
pipelines, and the local agent's registration."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig, ConfigError
from services.store import accounts, records
from services.store.connection import Redis, connect

EXAMPLES_PROJECT = "examples"


@dataclass
class Setup:
    api_key: str
    admin_password_file: Path
    loaded: list[str]
    problems: list[str]
    agent: AgentConfig


async def bootstrap(
    redis_url: str,
    nats_url: str,
    api_key: str | None,
    examples: Path | None,
    agent_dir: Path,
    ca: str = "",
) -> Setup:
    """`nats_url` and `ca` (PEM, for TLS) are what the local agent connects with."""
    r = connect(redis_url)
    try:
        if api_key is None or await records.check_api_key(r, api_key) is None:
            api_key = await records.create_api_key(r, "admin")
        password_file = await _admin(r, agent_dir.parent / "admin-password")
        await records.create_project(r, EXAMPLES_PROJECT)
        loaded, problems = await _load_examples(r, examples)
        agent = await _local_agent(r, nats_url, ca, agent_dir)
    finally:
        await r.aclose()
    return Setup(api_key, password_file, loaded, problems, agent)


async def _admin(r: Redis, password_file: Path) -> Path:
    """The `admin` account for the web UI; its password is kept in a 0600 file."""
    if password_file.exists():
        password = password_file.read_text().strip()
        if await accounts.login(r, "admin", password) is not None:
            return password_file
    password = secrets.token_urlsafe(12)
    if not await accounts.create_user(r, "admin", password, role="admin"):
        await accounts.set_password(r, "admin", password)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password_file


async def _load_examples(r: Redis, folder: Path | None) -> tuple[list[str], list[str]]:
    loaded: list[str] = []
    problems: list[str] = []
    if folder is None or not folder.is_dir():
        return loaded, problems
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml"), *folder.glob("*.json")]):
        source = path.read_text()
        fmt = "json" if path.suffix == ".json" else "yaml"
        result = records.validate_source(source, fmt)
        if not result.ok or result.pipeline is None:
            problems += [f"{path}:{p.line}:{p.column}: {p.message}" for p in result.problems]
            continue
        name = result.pipeline.name
        try:
            same = (await records.get_pipeline(r, EXAMPLES_PROJECT, name)).source == source
        except records.NotFound:
            same = False
        if not same:
            await records.save_pipeline(r, EXAMPLES_PROJECT, name, source, fmt)
        loaded.append(name)
    return loaded, problems


async def _local_agent(r: Redis, nats_url: str, ca: str, directory: Path) -> AgentConfig:
    """The agent registered by an earlier `up` in this data directory, or a new one."""
    try:
        known = AgentConfig.load(directory)
        if await records.agent_token_ok(r, known.id, known.token):
            config = AgentConfig(known.id, known.name, known.token, nats_url, ca)
            config.save(directory)
            return config
    except ConfigError:
        pass
    agent_id, token = await records.create_agent(r, "local", [], [EXAMPLES_PROJECT])
    config = AgentConfig(agent_id, "local", token, nats_url, ca)
    config.save(directory)
    return config
