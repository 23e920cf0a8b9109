"""ASGI layers both HTTP services (web, trigger) put outermost:

- `Errors`: whatever no handler answered becomes an answer in the service's format
  (`{"error": …}`, or a page for people): 503 with the reason when Valkey or NATS cannot
  be used now, 413 for a body over the limit, else 500 (logged with its traceback under
  a reference the answer gives, never sent);
- `BodyLimit`: no request body past its limit is read, so no body, form or upload can
  take the process's memory.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import nats.errors
import nats.js.errors
import redis.exceptions
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("runyard.http")

_VALKEY_DOWN = (
    redis.exceptions.ConnectionError,  # also a refused login (AuthenticationError), loading
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica, during a failover
    redis.exceptions.MasterDownError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
)
_NATS_DOWN = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


def outage(exc: BaseException) -> str | None:
    """The sentence for an error that means Valkey or NATS cannot be used now."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, _VALKEY_DOWN):
        return f"the state store (Valkey/Redis) is unavailable: {reason}"
    if isinstance(exc, _NATS_DOWN):
        return f"the message bus (NATS) is unavailable: {reason}"
    return None


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over the limit of {limit:,} bytes")


Render = Callable[[str, int, str], Response]  # (path, status, message) → the answer


def json_error(path: str, status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


class Errors:
    def __init__(self, app: ASGIApp, render: Render = json_error) -> None:
        self.app = app
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:  # a stream broke midway: nothing can be answered any more
                raise
            status, message = _classify(scope, exc)
            await self.render(scope.get("path", ""), status, message)(scope, receive, send)


def _classify(scope: Scope, exc: Exception) -> tuple[int, str]:
    where = f"{scope.get('method')} {scope.get('path')}"
    if isinstance(exc, BodyTooLarge):
        return 413, str(exc)
    if reason := outage(exc):
        log.warning("%s: 503, %s", where, reason)
        return 503, reason
    ref = uuid.uuid4().hex[:12]
    log.exception("%s: internal error %s", where, ref)
    return 500, f"internal error {ref}; the server's log has the details"


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.limit:
            raise BodyTooLarge(self.limit)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)
