"""The agent's NATS connection: admission first, then a connection that reconnects on
its own for as long as the agent runs.

While the server cannot be reached, each failed try is one log line (no traceback),
and tries back off from 0.5 s to BACKOFF_MAX; Ctrl-C is never held up by them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.aio.client import Client, Server

from agent.config import AgentConfig
from runyard.nats_client import servers, tls_options
from schemas import subjects

log = logging.getLogger("runyard.agent")

REFUSED_FOR = 60.0  # seconds of refused reconnects before the agent gives up
BACKOFF_FIRST = 0.5  # seconds before the second try
BACKOFF_MAX = 5.0


class Refused(RuntimeError):
    """The server does not accept this agent's credentials (wrong token, or removed),
    or the agent does not accept the server (its certificate does not verify)."""


def backoff(failures: int) -> float:
    """Seconds to wait before the next try after `failures` failed ones in a row."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_FIRST * 2.0 ** (failures - 1), BACKOFF_MAX)


def _options(config: AgentConfig, url: str) -> dict[str, Any]:
    """How this agent identifies itself: its id and token are its NATS user and
    password (checked by the server's auth callout), and replies come on its own inbox
    prefix, the only one its identity may subscribe to. With `tls://` the TLS handshake
    comes first, so the token never goes to a server that offers plain text; the server
    is verified against the agent file's CA (else the system's CAs)."""
    return {
        "name": f"runyard-agent-{config.id}",
        "user": config.id,
        "password": config.token,
        "inbox_prefix": subjects.agent_reply_prefix(config.id),
        "connect_timeout": 5,
        **tls_options(url, cadata=config.ca or None),
    }


def _is_refusal(error: BaseException | str) -> bool:
    return "authorization violation" in str(error).lower()


def _why(error: BaseException | str) -> str:
    return str(error) or type(error).__name__


async def _probe(config: AgentConfig, url: str) -> list[str]:
    """Connect once without reconnecting: [] when admitted, else what went wrong.

    nats-py retries a server it cannot reach for ever unless it has a positive
    `max_reconnect_attempts` (0 means no limit there): 1 gives up after a second try."""
    probe = Client()
    errors: list[str] = []

    async def keep(exc: Exception) -> None:
        errors.append(_why(exc))

    try:
        await probe.connect(
            servers(url),
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=keep,
            **_options(config, url),
        )
    except Exception as exc:
        errors.append(_why(exc))
    finally:
        admitted = probe.is_connected
        with contextlib.suppress(Exception):  # nats-py's close hangs after a TLS failure
            await asyncio.wait_for(probe.close(), 2)
    return [] if admitted else errors or ["closed while connecting"]


async def admitted(config: AgentConfig, url: str, stop: asyncio.Event) -> bool:
    """Wait until the server admits this agent (True), or `stop` is set (False);
    `Refused` when it rejects the credentials. A server that cannot be reached yet is
    retried with back-off, one log line a try."""
    failures = 0
    while not stop.is_set():
        probe = asyncio.ensure_future(_probe(config, url))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({probe, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not probe.done():  # Ctrl-C while a try hangs (a server that does not answer)
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
            return False
        errors = probe.result()
        if not errors:
            return True
        if any(_is_refusal(e) for e in errors):
            raise Refused(
                f"the server refused agent {config.id}: its token is wrong, the agent was "
                "removed (create it again with `runyard agent create`), or the server "
                "could not check it (see its dispatcher's log)"
            )
        if bad := [e for e in errors if "CERTIFICATE_VERIFY_FAILED" in e]:
            raise Refused(
                f"the server at {url} is not the one this agent was made for: its TLS "
                f"certificate does not verify against the CA in agent.json ({bad[0]})"
            )
        failures += 1
        wait = max(backoff(failures), BACKOFF_FIRST)
        log.warning("cannot reach NATS at %s (%s); retrying in %.1f s", url, errors[0], wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
    return False


async def connect(
    config: AgentConfig,
    url: str,
    refused: asyncio.Event | None = None,
    closed: asyncio.Event | None = None,
) -> Client:
    """`nats://`, `tls://`, `ws://` or `wss://`; reconnects on its own for as long as
    it runs (call `admitted` first: this waits for the server). `refused` is set once
    reconnects stay refused for REFUSED_FOR seconds (the agent was removed), `closed`
    when the client is closed (nats-py gives up on one refused right after it counted
    as connected, which a server restart can cause)."""
    nc = Client()
    since: list[float] = []
    failures = 0
    count = len(servers(url))

    def wait() -> float:
        """The back-off grows only once every server of a cluster was tried in vain."""
        return backoff(failures // count)

    def next_try(pool: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
        # the next server of a cluster in turn (nats-py would take the first one only)
        return pool[failures % len(pool)], wait()

    async def error(exc: Exception) -> None:
        nonlocal failures
        if _is_refusal(exc):
            since.append(time.monotonic())
            if refused is not None and since[-1] - since[0] >= REFUSED_FOR:
                refused.set()
            return
        if nc.is_connected or nc.is_closed:
            log.warning("NATS: %s", _why(exc))
            return
        failures += 1
        log.warning("cannot reach NATS at %s (%s); retrying in %.1f s", url, _why(exc), wait())

    async def reconnected() -> None:
        nonlocal failures
        since.clear()
        failures = 0
        log.info("reconnected to NATS")

    async def disconnected() -> None:
        if not nc.is_closed:
            log.warning("disconnected from NATS; reconnecting")

    async def gone() -> None:  # nats-py gave up on this client (or it was closed)
        if closed is not None:
            closed.set()

    await nc.connect(
        servers(url),
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        error_cb=error,
        reconnected_cb=reconnected,
        disconnected_cb=disconnected,
        closed_cb=gone,
        reconnect_to_server_handler=next_try,
        **_options(config, url),
    )
    return nc
