"""`system`: dispatcher, web API and helpers on fresh streams and an empty Valkey."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client

from services.stack import Stack
from services.store.crypto import new_key
from tests.agent.actions_repos import datatorch_actions
from tests.system.harness import System

SECRET_KEY = new_key()


@pytest.fixture(scope="session")
def actions_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return datatorch_actions(tmp_path_factory.mktemp("actions"))


@pytest.fixture
async def system(
    stack: Stack, nc: Client, redis: aioredis.Redis, tmp_path: Path, actions_base: str
) -> AsyncIterator[System]:
    env = {
        **os.environ,
        "RUNYARD_ACTIONS_BASE": actions_base,
        "RUNYARD_ALLOW_FILE_URLS": "1",  # the actions live in local bare repositories
        "RUNYARD_CONFIG": str(tmp_path / "cli.json"),
        "RUNYARD_SECRET_KEY": SECRET_KEY,
    }
    async with System(stack, tmp_path, env).running() as found:
        yield found
