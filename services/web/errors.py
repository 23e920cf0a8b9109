"""JSON errors: one sentence that says what is wrong, and a status code to match."""

from __future__ import annotations

import html
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)


async def http_error(request: Request, exc: Exception) -> Response:
    """JSON for the API; a page for people (an unknown address in the web UI)."""
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    body = (
        f"<!doctype html><title>{exc.status_code} · Runyard</title>"
        '<link rel="stylesheet" href="/static/app.css"><main>'
        f'<h1>{exc.status_code}</h1><p class="error">{html.escape(str(exc.detail))}</p>'
        '<p><a href="/">Back to projects</a></p></main>'
    )
    return HTMLResponse(body, status_code=exc.status_code)


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is ...:
        raise ApiError(422, f"'{name}' is required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(422, f"'{name}' must be of type {kind.__name__}")
    return value
