"""A clean Valkey database for each test of the dispatcher's scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.stack import Stack


@pytest.fixture
async def r(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stack.redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()
