"""The webhook receiver: `POST /hooks/<host>/<project>` (`github`, `gitlab`, `gitea` —
also Forgejo —, `bitbucket`) and `POST /hooks/generic/<project>/<pipeline>`.

A delivery is checked (size, content type, project, signature) before anything else is
read; a rejected one never reaches NATS. An accepted one is published with its
delivery id, project and pipeline as `Nats-Msg-Id` (the stream drops a redelivery to
the same hook, never the same body sent to another project's) and answered 202 once
JetStream has stored it, with the `problems` its runs will meet (a refused clone URL)."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from nats.js.client import JetStreamContext
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runyard import bounded
from runyard.settings import HOOK_MAX_BYTES, TriggerSettings
from schemas import subjects
from schemas.messages import PullRequestInfo, TriggerEvent
from services import bus
from services.asgi import Errors
from services.lifespan import connections
from services.store import crypto, records
from services.trigger import hosts, signatures

HOOK_HOSTS = ("github", "gitlab", "gitea", "bitbucket")


SECRET_CACHE_SECONDS = 5.0  # a changed secret applies within this long
_secrets: dict[str, tuple[bool, str | None, float]] = {}


async def _project_secret(request: Request, project: str) -> tuple[bool, str | None]:
    """(project exists, its webhook secret), remembered briefly: busy hooks then cost no
    store reads."""
    now = time.monotonic()
    cached = _secrets.get(project)
    if cached and now - cached[2] < SECRET_CACHE_SECONDS:
        return cached[0], cached[1]
    r = request.app.state.redis
    known = bool(project) and await records.project_exists(r, project)
    secret = await records.webhook_secret(r, project) if known else None
    if len(_secrets) > 10_000:
        _secrets.clear()
    _secrets[project] = (known, secret, now)
    return known, secret


def _answer(content: dict[str, Any], status: int = 200) -> Response:
    """JSON written by orjson (Starlette's JSONResponse uses the slower json module)."""
    return Response(orjson.dumps(content), status, media_type="application/json")


def _refuse(status: int, reason: str) -> Response:
    return _answer({"error": reason}, status)


async def _body(request: Request) -> bytes | Response:
    limit: int = request.app.state.max_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return _refuse(413, f"the body is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _refuse(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)  # a body in one chunk (the usual) is not copied


async def receive(request: Request) -> Response:
    host = request.path_params["host"]
    project = request.path_params.get("project") or request.query_params.get("project", "")
    pipeline = request.path_params.get("pipeline")
    if host not in HOOK_HOSTS and not (host == "generic" and pipeline):
        return _refuse(404, f"no webhook receiver for '{host}'")
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/json":
        return _refuse(
            400, "the content type must be application/json (set it in the webhook's settings)"
        )
    body = await _body(request)
    if isinstance(body, Response):
        return body
    try:
        known, secret = await _project_secret(request, project)
    except crypto.KeyMissing as exc:
        return _refuse(503, str(exc))
    if not known:
        return _refuse(404, f"no project '{project}'")
    if secret is None:
        return _refuse(401, f"project '{project}' has no webhook secret; set one first")
    headers = dict(request.headers.items())  # ASGI gives header names in lower case
    if reason := signatures.check(host, headers, body, secret):
        return _refuse(401, reason)
    try:
        payload = bounded.loads(body)
    except bounded.JsonRefused as exc:
        return _refuse(400, f"the body is {exc}")
    if not isinstance(payload, dict):
        return _refuse(400, "the body must be a JSON object")
    name = hosts.event_name(host, headers)
    found = hosts.normalise(host, name, payload)
    if isinstance(found, hosts.Ignored):
        return _answer({"ignored": found.reason})
    event = _event(host, headers, body, project, pipeline, found, payload)
    await _jetstream(request).publish(
        subjects.events(event.kind, project),
        _encode(event, payload),
        headers={"Nats-Msg-Id": event.id},
    )
    problems = {"problems": found.problems} if found.problems else {}
    return _answer({"event": event.id, **problems}, 202)


def _jetstream(request: Request) -> JetStreamContext:
    """The connection's JetStream context, made once rather than per hook."""
    state = request.app.state
    if getattr(state, "jetstream", None) is None:
        state.jetstream = state.nats.jetstream()
    js: JetStreamContext = state.jetstream
    return js


def _encode(event: TriggerEvent, payload: dict[str, Any]) -> bytes:
    """`event.encode()` without pydantic walking the payload: orjson just parsed it, so
    it holds only JSON's own types, which orjson writes as they are (the payload is
    most of a hook's bytes)."""
    fields = event.model_dump(mode="json", by_alias=True, exclude={"payload"})
    return orjson.dumps({**fields, "payload": payload})


def _event(
    host: str,
    headers: dict[str, str],
    body: bytes,
    project: str,
    pipeline: str | None,
    found: hosts.Trigger,
    payload: dict[str, Any],
) -> TriggerEvent:
    pr = found.pull_request
    return TriggerEvent(
        id=hosts.event_id(host, headers, body, project, pipeline),
        kind=found.kind,
        project=project,
        pipeline=pipeline,
        repository=found.repository,
        ref=found.ref,
        branch=found.branch,
        tag=found.tag,
        sha=found.sha,
        before=found.before,
        paths=found.paths,
        paths_known=found.paths_known,
        actor=found.actor,
        pull_request=PullRequestInfo.model_validate(pr) if pr else None,
        fork=found.fork,
        payload=payload,
        created_at=time.time(),
    )


def create_app(nats_url: str, redis_url: str, max_bytes: int = HOOK_MAX_BYTES) -> Starlette:
    """The receiver; `max_bytes` is the largest delivery it reads (RUNYARD_HOOK_MAX_BYTES)."""
    app = Starlette(
        middleware=[Middleware(Errors)],  # 503 with the reason when Valkey or NATS is down
        routes=[
            Route("/hooks/{host:str}/{project}/{pipeline}", receive, methods=["POST"]),
            Route("/hooks/{host}/{project}", receive, methods=["POST"]),
            Route("/hooks/{host}", receive, methods=["POST"]),
        ],
        lifespan=connections(nats_url, redis_url, "runyard-trigger"),
    )
    app.state.max_bytes = max_bytes
    return app


FROM_ENVIRONMENT = "services.trigger.app:from_environment"  # for uvicorn's workers


def from_environment() -> Starlette:
    """A worker of `runyard serve trigger --workers N`: the app with the URLs that command
    put in the environment, and the settings it checked there (read once, as the worker
    process starts)."""
    settings = TriggerSettings.from_env()
    bus.use(settings)
    return create_app(
        os.environ["RUNYARD_NATS_URL"], os.environ["RUNYARD_REDIS_URL"], settings.max_bytes
    )
