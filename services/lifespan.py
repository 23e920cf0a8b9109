"""How services live: the background ones (dispatcher, log collector, scheduler) run
between a start and a stop signal on their own connections; the HTTP ones keep theirs
on `app.state`, opened at start (with the streams ensured) and closed at shutdown.

A stop is bounded: a service logs that it is stopping, gets STOP_GRACE seconds to hand
back or finish what it holds, and its connections are then drained (pending publishes
flushed) or, past DRAIN_GRACE, closed; every service ends within 3 s of SIGTERM."""

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

STOP_GRACE = 2.0  # seconds for a service's own stop (it finishes the messages it holds)
DRAIN_GRACE = 0.5  # seconds to flush what is still buffered on the NATS connection

Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


def connections(nats_url: str, redis_url: str, name: str, **state: Any) -> Lifespan:
    log = logging.getLogger(f"runyard.{name.removeprefix('runyard-')}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.nats = await bus.connect(nats_url, name=name)
        app.state.redis = redis_connect(redis_url)
        for key, value in state.items():
            setattr(app.state, key, value)
        await bus.ensure_streams(app.state.nats.jetstream())
        log.info("%s ready", name)
        try:
            yield
        finally:
            log.info("%s stopping", name)
            await close(app.state.nats)
            await app.state.redis.aclose()
            log.info("%s stopped", name)

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
    """Connect, start the service, run until `stop` is set, then stop and disconnect.
    A stop while still connecting or starting (NATS not there yet) ends at once."""
    log = logging.getLogger(f"runyard.{name}")
    starting = asyncio.ensure_future(_start(nats_url, redis_url, name, make))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("%s stopping before it was ready", name)
        starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        return
    stopped.cancel()
    nc, r, service = starting.result()
    log.info("%s ready", name)
    try:
        await stop.wait()
    finally:
        log.info("%s stopping", name)
        try:
            await asyncio.wait_for(service.stop(), STOP_GRACE)
        except Exception as exc:  # a stop that hangs or fails must not keep the process
            log.warning("%s did not stop cleanly: %s", name, exc or type(exc).__name__)
        await close(nc)
        await r.aclose()
        log.info("%s stopped", name)


async def _start(
    nats_url: str, redis_url: str, name: str, make: Callable[[Client, Redis], Service]
) -> tuple[Client, Redis, Service]:
    nc = await bus.connect(nats_url, name=f"runyard-{name}")
    r = redis_connect(redis_url)
    service = make(nc, r)
    await service.start()
    return nc, r, service


async def close(nc: Client) -> None:
    """Drain the connection (flushing what is buffered) within DRAIN_GRACE, else close
    it; a connection that is reconnecting cannot drain and is closed."""
    try:
        await asyncio.wait_for(nc.drain(), DRAIN_GRACE)
    except Exception:
        with contextlib.suppress(Exception):
            await nc.close()
