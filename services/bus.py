"""NATS plumbing shared by the services: connecting, and the streams of DESIGN.md §4."""

from __future__ import annotations

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError

from schemas import subjects


async def connect(url: str, name: str = "runyard") -> Client:
    """A connection that keeps reconnecting for as long as the process lives."""
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5)


def stream_config(spec: subjects.StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType.FILE,
        max_age=spec.max_age or None,
        duplicate_window=spec.duplicate_window,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    """Create or update every stream and the artifact bucket; safe to run repeatedly."""
    for spec in subjects.STREAMS:
        config = stream_config(spec)
        try:
            await js.update_stream(config)
        except NotFoundError:
            await js.add_stream(config)
    try:
        await js.object_store(subjects.ARTIFACTS_BUCKET)
    except BucketNotFoundError:
        bucket = ObjectStoreConfig(bucket=subjects.ARTIFACTS_BUCKET, ttl=subjects.RETENTION)
        await js.create_object_store(subjects.ARTIFACTS_BUCKET, config=bucket)
