"""How services live: the background ones (dispatcher, log collector, scheduler) run
between a start and a stop signal on their own connections; the HTTP ones keep theirs
on `app.state`, opened at start (with the streams ensured) and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from nats.aio.client import Client
from starlette.applications import Starlette

from services import bus
from services.store.connection import Redis
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


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_service(
    name: str,
    nats_url: str,
    redis_url: str,
    stop: asyncio.Event,
    make: Callable[[Client, Redis], Service],
) -> None:
    """Connect, start the service, run until `stop` is set, then stop and disconnect."""
    nc = await bus.connect(nats_url, name=f"runyard-{name}")
    r = redis_connect(redis_url)
    service = make(nc, r)
    await service.start()
    logging.getLogger(f"runyard.{name}").info("%s ready", name)
    try:
        await stop.wait()
    finally:
        await service.stop()
        await nc.drain()
        await r.aclose()
