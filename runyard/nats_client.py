"""What the services and the agent share as NATS clients: a URL's server list, its TLS
options, and the loop that works from a JetStream pull consumer.

The agent ships without `services/`, so this lives in `runyard`; `services.bus` and
`agent.daemon` both run their consumers through `pull_loop`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

FETCH_WAIT = 5.0  # seconds one fetch waits on an empty consumer
HANDLE_GRACE = 1.5  # seconds a message being handled may take to finish at a stop
RETRY_GAP = 0.5  # seconds after a fetch that failed (disconnected) before the next one

# What to do with one message: a coroutine (awaited, given HANDLE_GRACE at a stop), or
# nothing (the handler did its work, or started it, at once).
Handler = Callable[[Msg], Awaitable[None] | None]


def servers(url: str) -> list[str]:
    """The servers of `url`: one, or a cluster's, comma-separated."""
    return [u.strip() for u in url.split(",") if u.strip()]


def tls_options(url: str, cafile: str | None = None, cadata: str | None = None) -> dict[str, Any]:
    """nats-py's TLS options for `url`: the server is verified against a CA (a PEM file,
    or PEM text) when one is given, else the system's CAs; with `tls://` servers the TLS
    handshake comes first, so credentials never go to a server offering plain text."""
    context = ssl.create_default_context(cafile=cafile, cadata=cadata) if cafile or cadata else None
    return {
        "tls": context,
        "tls_handshake_first": any(s.startswith("tls://") for s in servers(url)),
    }


async def pull_loop(
    sub: JetStreamContext.PullSubscription,
    handle: Handler,
    *,
    name: str,
    log: logging.Logger,
    wait: Callable[[], float] = lambda: FETCH_WAIT,
    empty: Callable[[], None] | None = None,
    broken: Callable[[], None] | None = None,
    release: bool = True,
) -> None:
    """Fetch from `sub` one message at a time (no waiting to fill a batch) and hand each
    to `handle`, until cancelled. Each fetch waits `wait()` seconds; one that finds
    nothing calls `empty`, one that fails (a lost connection: nats-py reconnects on its
    own) calls `broken` and pauses RETRY_GAP. A handler that raises is logged (its
    message, unacked, comes back after the consumer's ack wait).

    Stopping is cancelling the task: a message being handled is given HANDLE_GRACE
    seconds to finish (so it is acked, not left for the ack wait), a fetch under way is
    abandoned, and with `release` a message that arrived for it is handed back (nak) at
    once, so a replica or the restarted process takes it without waiting the ack wait."""
    task = asyncio.current_task()
    try:
        while True:
            if task is not None and task.cancelling():
                # nats-py's fetch can turn our cancel into its TimeoutError (its own
                # wait_for racing ours): the stop must still end this loop
                raise asyncio.CancelledError
            try:
                msgs = await sub.fetch(1, timeout=wait())
            except TimeoutError:
                if empty is not None:
                    empty()
                continue
            except Exception as exc:
                if broken is not None:
                    broken()
                log.debug("fetch from %s: %s", name, exc)
                await asyncio.sleep(RETRY_GAP)
                continue
            for msg in msgs:
                try:
                    handling = handle(msg)
                    if handling is not None:
                        await _finish(handling)
                except Exception:  # a handler's bug must not end the consumer for good
                    log.exception("handling a message of %s (it is delivered again)", name)
    finally:
        if release:
            await release_held(sub, name, log)


async def _finish(handling: Awaitable[None]) -> None:
    """Await `handling`; if cancelled meanwhile, let it finish within HANDLE_GRACE."""
    task = asyncio.ensure_future(handling)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, HANDLE_GRACE)
        raise


async def release_held(
    sub: JetStreamContext.PullSubscription, name: str, log: logging.Logger
) -> None:
    """Unsubscribe, handing back what was delivered but not handled. nats-py keeps such
    messages in the subscription's queue (it has no public way to take them without
    asking the server for more), where a connection's drain would wait on them."""
    pending = sub._sub._pending_queue
    held = []
    while not pending.empty():
        msg = pending.get_nowait()
        pending.task_done()
        if not JetStreamContext.is_status_msg(msg):
            held.append(msg)
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
    for msg in held:
        with contextlib.suppress(Exception):
            await msg.nak()
    if held:
        log.info("handed back %d unhandled message(s) of %s", len(held), name)
