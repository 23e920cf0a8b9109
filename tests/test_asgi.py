"""The HTTP services' outer layers: any failure is an answer in the service's format,
an outage of Valkey or NATS a 503 that says which, a body over the limit a 413."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import nats.errors
import pytest
import redis.exceptions
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.asgi import BodyLimit, Errors, outage


def app_raising(exc: Exception) -> Starlette:
    async def fails(request: Request) -> JSONResponse:
        raise exc

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    return Starlette(
        routes=[Route("/api/fail", fails), Route("/api/echo", echo, methods=["POST"])],
        middleware=[Middleware(Errors), Middleware(BodyLimit, limit=1000)],
    )


def client(app: Starlette) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.parametrize(
    ("exc", "status", "said"),
    [
        (redis.exceptions.ConnectionError("Error 111 connecting"), 503, "(Valkey/Redis)"),
        (redis.exceptions.TimeoutError("Timeout reading"), 503, "(Valkey/Redis)"),
        (redis.exceptions.BusyLoadingError("loading"), 503, "(Valkey/Redis)"),
        (nats.errors.TimeoutError(), 503, "the message bus (NATS) is unavailable"),
        (nats.errors.ConnectionClosedError(), 503, "(NATS)"),
        (nats.errors.NoRespondersError(), 503, "(NATS)"),
        (RuntimeError("a secret detail"), 500, "internal error "),
    ],
)
async def test_failures_are_json_answers(exc: Exception, status: int, said: str) -> None:
    async with client(app_raising(exc)) as http:
        response = await http.get("/api/fail")
    assert response.status_code == status
    error = response.json()["error"]
    assert said in error
    assert "secret detail" not in error and "Traceback" not in error


async def test_bodies_over_the_limit_are_413() -> None:
    async with client(app_raising(RuntimeError())) as http:
        assert (await http.post("/api/echo", content=b"x" * 1000)).json() == {"size": 1000}
        declared = await http.post("/api/echo", content=b"x" * 1001)
        assert declared.status_code == 413
        assert declared.json() == {"error": "the request body is over the limit of 1,000 bytes"}

        async def chunks() -> AsyncIterator[bytes]:
            yield b"x" * 600
            yield b"x" * 600

        streamed = await http.post("/api/echo", content=chunks())  # no Content-Length
        assert streamed.status_code == 413


def test_outage_names_only_dependency_errors() -> None:
    assert outage(ValueError("x")) is None
    assert outage(redis.exceptions.ResponseError("WRONGTYPE")) is None
