"""Real servers for the whole test session: nats-server (JetStream) and valkey-server,
started by the embedded-stack supervisor on free ports in a temporary directory.

Per test: `nc`/`js` start from freshly created streams, `redis` from an empty database.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas import subjects
from services import bus
from services.stack import Stack

ROOT = Path(__file__).resolve().parent.parent

# Property tests' budgets (tests/fuzzing.py): modest by default, `HYPOTHESIS_PROFILE=long`
# for a long hunt. No deadline: a busy machine must not fail a test; the fuzz tests bound
# each example's CPU time instead.
settings.register_profile(
    "runyard", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", settings.get_profile("runyard"), max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "runyard"))


@pytest.fixture(autouse=True, scope="module")
def _leaks_name_their_module() -> Iterator[None]:
    """An unclosed socket is reported when the garbage collector finds it, which may be
    in another module's test (once, in CI, a test that only builds nested lists): a
    collection as each module ends makes the module that leaked it fail instead."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
async def nc(stack: Stack) -> AsyncIterator[Client]:
    client = await bus.connect(stack.nats_url, name="tests")
    js = client.jetstream()
    for spec in subjects.STREAMS:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(spec.name)
    await bus.ensure_streams(js)
    yield client
    await client.close()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
async def redis(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stack.redis_url)
    await client.flushdb()
    yield client
    await client.aclose()
