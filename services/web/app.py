"""The web application: API-key authentication, the API routes, and the connections
it shares (NATS, Redis) opened in the lifespan."""

from __future__ import annotations

import hmac
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.asgi import BodyLimit, Errors
from services.credentials import without_user
from services.lifespan import connections
from services.store import accounts, apikeys, records
from services.web import access, api, authz, outputs, ui
from services.web.errors import ApiError, api_error, error_response, http_error
from services.web.guard import Authorize
from services.web.health import health
from services.web.middleware import MAX_BODY, SecurityHeaders
from services.web.ui import SESSION_COOKIE

PUBLIC = ("/api/health",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
KEY_CACHE_SECONDS = 5.0


class ApiKeys:
    """`Authorization: Bearer <API key>` (or a browser's session cookie) on every API
    call but the health check.

    Known keys are remembered for a few seconds, so a busy client costs no Redis read
    per call; a revoked key, or one whose user was removed, stops working within
    `KEY_CACHE_SECONDS`, an expired one at once. A personal key is its user, with the
    user's roles as they are when the key is checked."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # key → (name, its record, checked at)
        self.known: dict[str, tuple[str, dict[str, str], float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path in PUBLIC:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        actor: tuple[str, dict[str, str]] | JSONResponse | None = None
        if scheme.lower() == "bearer":
            actor = await self._actor(request, token.strip())
        elif not token and (cookie := request.cookies.get(SESSION_COOKIE)):
            actor = await self._session(request, cookie)
        if isinstance(actor, JSONResponse):
            await actor(scope, receive, send)
            return
        if actor is None:
            message = "the API key is not valid" if token else "an API key is required"
            response = JSONResponse({"error": f"{message} (Authorization: Bearer …)"}, 401)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {}).update(actor=actor[0], key=actor[1])
        await self.app(scope, receive, send)

    async def _session(
        self, request: Request, cookie: str
    ) -> tuple[str, dict[str, str]] | JSONResponse | None:
        """A browser's session; changes also need its CSRF token in `X-CSRF-Token`."""
        found = await accounts.session(request.app.state.redis, cookie)
        if found is None:
            return None
        session, user = found
        if request.method not in SAFE_METHODS and not hmac.compare_digest(
            request.headers.get("x-csrf-token", ""), session.csrf
        ):
            return JSONResponse({"error": "missing or wrong CSRF token"}, 403)
        return user.get("name", session.user), user

    async def _actor(self, request: Request, token: str) -> tuple[str, dict[str, str]] | None:
        if not token:
            return None
        now = time.monotonic()
        cached = self.known.get(token)
        if cached and now - cached[2] < KEY_CACHE_SECONDS and not records.key_expired(cached[1]):
            return cached[0], cached[1]
        r = request.app.state.redis
        checked = await records.check_api_key(r, token)
        found = await apikeys.principal(r, checked) if checked else None
        if found is None:
            self.known.pop(token, None)
            return None
        if len(self.known) > 10_000:
            self.known.clear()
        self.known[token] = (found.get("name", "api"), found, now)
        return self.known[token][0], found


def create_app(
    nats_url: str,
    redis_url: str,
    public_nats_url: str | None = None,
    nats_ca: str = "",
    max_bytes: int = MAX_BODY,
) -> Starlette:
    """`public_nats_url` and `nats_ca` (a CA's PEM) are what new agents are given; the
    default URL is this service's own without its credentials. `max_bytes` is the
    largest request body read (RUNYARD_WEB_MAX_BYTES)."""
    lifespan = connections(
        nats_url,
        redis_url,
        "runyard-web",
        public_nats_url=public_nats_url or without_user(nats_url),
        nats_ca=nats_ca,
    )
    return Starlette(
        routes=[
            authz.route("/api/health", health, authz.PUBLIC),
            *api.routes,
            *access.routes,
            *outputs.routes,
            *ui.routes,
        ],
        middleware=[
            Middleware(Errors, render=error_response),  # outermost: answers for all below
            Middleware(BodyLimit, limit=max_bytes),
            Middleware(SecurityHeaders),
            Middleware(ApiKeys),
            Middleware(Authorize),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
