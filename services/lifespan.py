"""The lifespan of the HTTP services: NATS and Redis connections on `app.state`,
opened at start (with the streams ensured) and closed at shutdown."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette

from services import bus
from services.store.connection import connect as redis_connect

Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


def connections(nats_url: str, redis_url: str, name: str, **state: Any) -> Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.nats = await bus.connect(nats_url, name=name)
        app.state.redis = redis_connect(redis_url)
        for key, value in state.items():
            setattr(app.state, key, value)
        await bus.ensure_streams(app.state.nats.jetstream())
        try:
            yield
        finally:
            await app.state.nats.close()
            await app.state.redis.aclose()

    return lifespan
