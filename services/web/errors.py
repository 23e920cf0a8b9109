"""JSON errors: one sentence that says what is wrong, and a status code to match."""

from __future__ import annotations

import html
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from runyard import bounded


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
    return error_response(request.url.path, exc.status_code, str(exc.detail))


def error_response(path: str, status: int, message: str) -> Response:
    """`{"error": message}` under /api/ (and /hooks/), a small page elsewhere."""
    if path.startswith(("/api/", "/hooks/")):
        return JSONResponse({"error": message}, status_code=status)
    body = (
        f'<!doctype html><html lang="en"><title>{status} · Runyard</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/app.css"><main>'
        f'<h1>{status}</h1><p class="error">{html.escape(message)}</p>'
        '<p><a href="/">Back to projects</a></p></main>'
    )
    return HTMLResponse(body, status_code=status)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object: 400 for anything else, also for JSON nested deeper
    than `bounded.MAX_JSON_DEPTH` (the body's size is capped by `BodyLimit`)."""
    try:
        body = bounded.loads(await request.body())
    except bounded.JsonRefused as exc:
        raise ApiError(400, f"the request body is {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


_WHOLE = re.compile(r"-?[0-9]{1,18}")


def query_int(
    request: Request, name: str, default: int, *, low: int = 0, high: int | None = None
) -> int:
    """The integer query parameter `name` (`default` when absent): 400 when it is not
    a whole number from `low` to `high`."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    value = int(text) if _WHOLE.fullmatch(text) else None
    if value is None or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ApiError(400, f"'{name}' must be a whole number {span}; got '{raw[:40]}'")
    return value


def field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is ...:
        raise ApiError(422, f"'{name}' is required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(422, f"'{name}' must be of type {kind.__name__}")
    return value


def query_float(request: Request, name: str) -> float | None:
    """The number query parameter `name` (None when absent): 400 when it is not one."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise ApiError(400, f"'{name}' must be a number; got '{raw[:40]}'")
    return value
