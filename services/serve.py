"""`runyard serve SERVICE`: one service in the foreground, for `runyard up` and for
production layouts (one process per service, as many replicas as wanted)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
import uvicorn
from nats.aio.client import Client

from runyard import aio
from runyard.settings import (
    DispatcherSettings,
    LogsSettings,
    SchedulerSettings,
    ServiceSettings,
    TriggerSettings,
    WebSettings,
)
from services import bus
from services.dispatcher import admission
from services.dispatcher.service import Dispatcher
from services.lifespan import Service, run_service
from services.logs.service import Collector
from services.scheduler.service import Scheduler
from services.store import crypto
from services.store.connection import Redis
from services.trigger.app import FROM_ENVIRONMENT as TRIGGER_FROM_ENVIRONMENT
from services.trigger.app import create_app as trigger_app
from services.web.app import create_app

NATS = click.option(
    "--nats-url", envvar="RUNYARD_NATS_URL", default="nats://127.0.0.1:4222", show_default=True
)
REDIS = click.option(
    "--redis-url", envvar="RUNYARD_REDIS_URL", default="redis://127.0.0.1:6379/0", show_default=True
)


S = TypeVar("S", bound=ServiceSettings)

# Seconds uvicorn waits for open requests (SSE streams never end by themselves) after
# SIGTERM before it closes them; the lifespan's own shutdown follows (services.lifespan).
HTTP_GRACE = 1


def _start(kind: type[S]) -> S:
    """The process's settings, read once as it starts (a bad value ends it with a
    sentence naming the variable); its log level and NATS settings take effect here."""
    settings = kind.from_env()  # a bad value: SettingsError, a click error (no traceback)
    logging.basicConfig(level=settings.log, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    bus.use(settings)
    return settings


def _background(
    name: str, nats_url: str, redis_url: str, make: Callable[[Client, Redis], Service]
) -> None:
    """Run a background service until SIGINT or SIGTERM, on uvloop (call `_start`
    first)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_service(name, nats_url, redis_url, stop, make)

    aio.run(main())


@click.group()
def serve() -> None:
    """Run one Runyard service in the foreground.

    \b
    Example:
      RUNYARD_NATS_URL=nats://nats:4222 runyard serve dispatcher
    """


@serve.command("dispatcher")
@NATS
@REDIS
def serve_dispatcher(nats_url: str, redis_url: str) -> None:
    """Turn trigger events into runs and drive them on agents.

    \b
    Example:
      runyard serve dispatcher --nats-url nats://nats:4222 --redis-url redis://valkey:6379/0
    """
    admitting = admission.Settings.of(_start(DispatcherSettings))
    try:
        crypto.keyring()  # runs need their project's secrets: refuse to start without
    except crypto.KeyMissing as exc:
        raise click.ClickException(str(exc)) from None
    _background("dispatcher", nats_url, redis_url, lambda nc, r: Dispatcher(nc, r, admitting))


@serve.command("logs")
@NATS
@REDIS
def serve_logs(nats_url: str, redis_url: str) -> None:
    """Store step logs from NATS in Valkey/Redis (the log collector).

    \b
    Example:
      RUNYARD_LOG_CAP=134217728 runyard serve logs
    """
    settings = _start(LogsSettings)
    _background("logs", nats_url, redis_url, lambda nc, r: Collector(nc, r, settings))


@serve.command("scheduler")
@NATS
@REDIS
def serve_scheduler(nats_url: str, redis_url: str) -> None:
    """Fire cron trigger events for every pipeline schedule.

    \b
    Example:
      RUNYARD_SCHEDULE_GRACE=600 runyard serve scheduler
    """
    grace = _start(SchedulerSettings).grace
    _background("scheduler", nats_url, redis_url, lambda nc, r: Scheduler(nc, r, grace))


@serve.command("trigger")
@NATS
@REDIS
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8401, show_default=True, type=int)
@click.option(
    "--workers",
    envvar="RUNYARD_TRIGGER_WORKERS",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="processes sharing the port: one uses at most one core (docs/performance.md)",
)
def serve_trigger(nats_url: str, redis_url: str, host: str, port: int, workers: int) -> None:
    """The webhook receiver over HTTP (/hooks/<host>/<project>).

    \b
    Example:
      runyard serve trigger --host 0.0.0.0 --port 8401 --workers 2
    """
    settings = _start(TriggerSettings)
    if workers > 1:
        # uvicorn starts each worker from an import path; they read the URLs from here
        # (and their settings, as checked above)
        os.environ.update(RUNYARD_NATS_URL=nats_url, RUNYARD_REDIS_URL=redis_url)
    uvicorn.run(
        trigger_app(nats_url, redis_url, settings.max_bytes)
        if workers == 1
        else TRIGGER_FROM_ENVIRONMENT,
        factory=workers > 1,
        workers=workers,
        proxy_headers=False,  # nothing reads the client's address: skip it per request
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=HTTP_GRACE,
    )


@serve.command("web")
@NATS
@REDIS
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8400, show_default=True, type=int)
@click.option(
    "--public-nats-url",
    envvar="RUNYARD_PUBLIC_NATS_URL",
    default=None,
    help="the NATS URL new agents are given (default: --nats-url without its credentials)",
)
@click.option(
    "--nats-ca",
    envvar="RUNYARD_NATS_CA",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the CA certificate (PEM) new agents verify the NATS server with",
)
def serve_web(
    nats_url: str,
    redis_url: str,
    host: str,
    port: int,
    public_nats_url: str | None,
    nats_ca: Path | None,
) -> None:
    """The REST API (and web UI) over HTTP.

    \b
    Example:
      runyard serve web --host 0.0.0.0 --port 8400
    """
    settings = _start(WebSettings)
    ca = nats_ca.read_text() if nats_ca else ""
    app = create_app(nats_url, redis_url, public_nats_url, ca, settings.max_bytes)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=HTTP_GRACE,
    )
