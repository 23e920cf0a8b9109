"""What the login page needs beyond checking a password: where it may send the browser
afterwards, the session cookie's attributes, and the throttle's verdict."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from services.web import throttle
from services.web.middleware import is_https

MAX_NEXT = 2000


def safe_next(target: str | None) -> str:
    """`target` when it is a path of this site, else `/`: no scheme or host, no `//` or
    `/\\` at its start (a browser reads both as another host), no backslash, space or
    control character anywhere (browsers drop tabs and newlines, so `/\\t/evil` would
    become `//evil`)."""
    if not target or len(target) > MAX_NEXT or not target.startswith("/"):
        return "/"
    if target[1:2] in ("/", "\\") or any(c == "\\" or c <= " " or c == "\x7f" for c in target):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def refused(request: Request, account: str | None) -> int:
    """Seconds the throttle wants this login to wait (0: go ahead); `account` None for
    a login with an API key."""
    return await throttle.refused_for(request.app.state.redis, account, address(request))


async def failed(request: Request, account: str | None) -> None:
    await throttle.failed(request.app.state.redis, account, address(request))


async def succeeded(request: Request, account: str | None) -> None:
    if account is not None:
        await throttle.succeeded(request.app.state.redis, account)


def wait_text(seconds: int) -> str:
    minutes = (seconds + 59) // 60
    return f"Too many failed logins; try again in {minutes} minute{'s' if minutes > 1 else ''}."


def set_session(response: Response, request: Request, name: str, token: str, max_age: int) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, and Secure when the browser talks
    HTTPS to us or to a proxy that says so (it would not send a Secure cookie over HTTP)."""
    response.set_cookie(
        name,
        token,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=is_https(request.scope),
    )


def clear_session(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(name, httponly=True, samesite="lax", secure=is_https(request.scope))
