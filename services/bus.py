"""NATS plumbing shared by the services: connecting, the streams of DESIGN.md §4, and
the durable pull consumers the services work from."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError

from runyard import nats_client
from runyard.settings import ServiceSettings
from schemas import subjects

log = logging.getLogger("runyard.bus")


# this process's settings, `use`d at its start (`runyard serve`)
_process: ServiceSettings | None = None


def use(settings: ServiceSettings) -> None:
    """Take the process's settings: the CA NATS is verified against (RUNYARD_NATS_CA)
    and the replicas of the streams it makes (RUNYARD_NATS_REPLICAS)."""
    global _process
    _process = settings


def _settings() -> ServiceSettings:
    """The process's settings; where none were `use`d (a test, a bench, `runyard up`
    itself), the environment's now."""
    return _process or ServiceSettings.from_env()


async def connect(url: str, name: str = "runyard") -> Client:
    """A connection that keeps reconnecting for as long as the process lives (to any
    server of `url`, which may list several, comma-separated); with `tls://` URLs the
    TLS handshake comes first, verified against the process's `RUNYARD_NATS_CA` (a PEM
    file) when set, else the system's CAs."""
    ca = _settings().nats_ca
    return await nats.connect(
        nats_client.servers(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        **nats_client.tls_options(url, cafile=str(ca) if ca else None),
    )


REPLICAS_SETTING = "RUNYARD_NATS_REPLICAS"
JETSTREAM_READY = 30.0  # seconds a cluster just started may take to elect its leaders
# "no suitable peers for placement": a node just started that does not know its peers
# yet (as a 5xx error says no leader was elected yet)
NO_PEERS_YET = 10005


def replicas() -> int:
    """How many servers keep each stream and bucket: the process's
    `RUNYARD_NATS_REPLICAS`, 1 (one server) unless set; 3 on a 3-node cluster, so that it
    survives losing any one."""
    return _settings().nats_replicas


def stream_config(spec: subjects.StreamSpec, copies: int = 1) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType.FILE,
        max_age=spec.max_age or None,
        duplicate_window=spec.duplicate_window,
        num_replicas=copies,
    )


async def ensure_streams(js: JetStreamContext, copies: int | None = None) -> None:
    """Create or update every stream and the artifact bucket, with `copies` replicas
    (default: `replicas()`); safe to run repeatedly. On a cluster that is still electing
    its leaders, tried again for up to JETSTREAM_READY seconds."""
    copies = replicas() if copies is None else copies
    deadline = time.monotonic() + JETSTREAM_READY
    while True:
        try:
            return await _ensure_streams(js, copies)
        except (APIError, TimeoutError, NoRespondersError) as exc:
            unready = not isinstance(exc, APIError) or (
                (exc.code or 0) >= 500 or exc.err_code == NO_PEERS_YET
            )
            if not unready or time.monotonic() > deadline:
                raise
            log.info("JetStream not ready yet (%s); trying again", exc or type(exc).__name__)
            await asyncio.sleep(0.5)


async def _ensure_streams(js: JetStreamContext, copies: int) -> None:
    for spec in subjects.STREAMS:
        config = stream_config(spec, copies)
        try:
            await js.update_stream(config)
        except NotFoundError:
            await js.add_stream(config)
    try:
        await js.object_store(subjects.ARTIFACTS_BUCKET)
    except BucketNotFoundError:
        bucket = ObjectStoreConfig(
            bucket=subjects.ARTIFACTS_BUCKET, ttl=subjects.RETENTION, replicas=copies
        )
        await js.create_object_store(subjects.ARTIFACTS_BUCKET, config=bucket)


# seconds before a message fetched but never acked (its replica was killed) is
# delivered again, to another replica
ACK_WAIT = 30.0


async def ensure_consumer(
    js: JetStreamContext, stream: subjects.StreamSpec, durable: str, max_ack_pending: int
) -> None:
    """Create the durable consumer once; replicas and restarts bind to the same one."""
    try:
        await js.consumer_info(stream.name, durable)
    except NotFoundError:
        config = ConsumerConfig(
            durable_name=durable, ack_wait=ACK_WAIT, max_ack_pending=max_ack_pending
        )
        await js.add_consumer(stream.name, config)


async def pull(
    js: JetStreamContext,
    stream: subjects.StreamSpec,
    durable: str,
    handle: Callable[[Msg], Awaitable[None]],
) -> None:
    """Work from a durable consumer until cancelled: `runyard.nats_client.pull_loop`
    (one message at a time; a stop finishes the message being handled and hands back
    what was delivered for an abandoned fetch)."""
    sub = await js.pull_subscribe_bind(durable, stream.name)
    await nats_client.pull_loop(sub, handle, name=durable, log=log)
