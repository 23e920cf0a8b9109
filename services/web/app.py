"""The web application: API-key authentication, the API routes, and the connections
it shares (NATS, Redis) opened in the lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services import bus
from services.store import records
from services.store.connection import connect as redis_connect
from services.web import api
from services.web.errors import ApiError, api_error, http_error

PUBLIC = ("/api/health",)


class ApiKeys(BaseHTTPMiddleware):
    """`Authorization: Bearer <API key>` on every API call but the health check."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if not request.url.path.startswith("/api/") or request.url.path in PUBLIC:
            return await call_next(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return JSONResponse(
                {"error": "an API key is required (Authorization: Bearer …)"}, status_code=401
            )
        found = await records.check_api_key(request.app.state.redis, token.strip())
        if found is None:
            return JSONResponse({"error": "the API key is not valid"}, status_code=401)
        request.state.actor = found.get("name", "api")
        return await call_next(request)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def create_app(nats_url: str, redis_url: str, public_nats_url: str | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.nats = await bus.connect(nats_url, name="runyard-web")
        app.state.redis = redis_connect(redis_url)
        app.state.public_nats_url = public_nats_url or nats_url
        await bus.ensure_streams(app.state.nats.jetstream())
        try:
            yield
        finally:
            await app.state.nats.close()
            await app.state.redis.aclose()

    return Starlette(
        routes=[Route("/api/health", health), *api.routes],
        middleware=[Middleware(ApiKeys)],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
