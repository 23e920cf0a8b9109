"""Connecting to Redis / Valkey."""

from __future__ import annotations

import redis.asyncio as aioredis

Redis = aioredis.Redis


def connect(url: str) -> Redis:
    return aioredis.from_url(url, decode_responses=True, health_check_interval=30)


def strs(values: object) -> list[str]:
    """A reply of names (the client is set to decode) typed as what it is."""
    assert isinstance(values, list | set | tuple)
    return [str(v) for v in values]


def strdict(values: object) -> dict[str, str]:
    assert isinstance(values, dict)
    return {str(k): str(v) for k, v in values.items()}
