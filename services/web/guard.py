"""The one place routes are authorized: before a request reaches its handler, find the
route it will reach and check that route's rule (services/web/authz.py). A route with
no rule is refused; an unknown path or method goes on to the router's 404 or 405.

API calls arrive signed in already (`ApiKeys` in services/web/app.py answers 401); a
page of the UI is signed in here from its session cookie, or sent to the login page."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.store import accounts
from services.web import authz, checks
from services.web.errors import http_error
from services.web.ui import SESSION_COOKIE


def _route(scope: Scope) -> tuple[BaseRoute, MutableMapping[str, Any]] | None:
    """The route the router will pick (the first full match), and its scope."""
    routes: list[BaseRoute] = scope["app"].routes
    for found in routes:
        match, child = found.matches(scope)
        if match is Match.FULL:
            return found, child
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request's body again, for the handler (a rule read it first)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


class Authorize:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _route(scope) if scope["type"] == "http" else None
        rule = authz.rule_of(found[0]) if found else None
        if found is None or (rule is not None and rule.public):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        request = Request({**scope, **found[1]}, receive)
        response = await self._refusal(request, rule, state)
        if response is not None:
            await response(scope, receive, send)
            return
        if rule is not None and rule.reads_body:
            receive = _replay(await request.body(), receive)
        await self.app(scope, receive, send)

    async def _refusal(
        self, request: Request, rule: authz.Rule | None, state: dict[str, Any]
    ) -> Response | None:
        api = request.url.path.startswith("/api/")
        if rule is None:
            message = (
                f"{request.method} {request.url.path} has no authorization rule "
                "(declare its route with services.web.authz.route)"
            )
            return await _error(request, api, 403, message)
        if "key" not in state:
            if api:  # ApiKeys lets no API call through unsigned; refuse if one slips by
                return JSONResponse({"error": "an API key is required"}, 401)
            cookie = request.cookies.get(SESSION_COOKIE)
            signed = await accounts.session(request.app.state.redis, cookie) if cookie else None
            if signed is None:
                return RedirectResponse(f"/login?next={quote(request.url.path)}", 303)
            state.update(key=signed[1], actor=signed[1].get("name", signed[0].user))
        try:
            await checks.check(request, rule)
        except checks.Refused as exc:
            return await _error(request, api, exc.status, exc.message)
        return None


async def _error(request: Request, api: bool, status: int, message: str) -> Response:
    if api:
        return JSONResponse({"error": message}, status)
    return await http_error(request, HTTPException(status, message))
