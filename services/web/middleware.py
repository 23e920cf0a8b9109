"""The web app's own outer layer (inside `services.asgi`'s `Errors` and `BodyLimit`):
a Content-Security-Policy and the usual hardening headers on every answer,
`Strict-Transport-Security` over HTTPS, and `no-store` on API answers and pages (keys,
secrets' names and CSRF tokens stay out of caches)."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runyard.settings import WEB_MAX_BYTES

# bytes of one request unless the process says otherwise (RUNYARD_WEB_MAX_BYTES)
MAX_BODY = WEB_MAX_BYTES


def is_https(scope: Scope) -> bool:
    """Served over HTTPS, or behind a proxy that says the client used HTTPS
    (`X-Forwarded-Proto` / `Forwarded: proto=https`). Only ever used to make answers
    stricter (Secure cookies, HSTS), so a client that lies about it harms itself alone."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    headers = Headers(scope=scope)
    forwarded_proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    forwarded = headers.get("forwarded", "").split(",")[0].lower().replace(" ", "")
    return forwarded_proto == "https" or "proto=https" in forwarded.split(";")


# No inline script anywhere; `style-src-attr` lets the log view colour ANSI output with
# style attributes (browsers without CSP 3 fall back to `style-src` and show no colours).
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
HSTS = "max-age=31536000"


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = is_https(scope)
        api = HTTPConnection(scope).url.path.startswith("/api/")

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
                html = headers.get("content-type", "").startswith("text/html")
                if api or html:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, sending)
