"""What a run produced: step logs (a page of JSON, or Server-Sent Events that replay
and then follow), artifacts (listed, downloaded as a stream) and test summaries (in
the run itself)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from runyard.engine.state import JobState, RunState
from schemas import subjects
from services.store import logs
from services.web import authz
from services.web.authz import route
from services.web.errors import ApiError, query_int
from services.web.lookup import nats_of, redis_of, stored_run

# One blocking read of new lines, then a keep-alive comment. Under redis-py's default
# 5 s socket timeout: a read that outlasts it raises and cuts the stream off mid-chunk
# (the browser's ERR_INCOMPLETE_CHUNKED_ENCODING).
FOLLOW_BLOCK_MS = 2000
PAGE = 1000


async def _step(request: Request) -> tuple[str, JobState, str, int]:
    stored = await stored_run(request)
    state = RunState.model_validate_json(stored.fields["state"])
    job_key, step_id = request.path_params["job"], request.path_params["step"]
    job = state.jobs.get(job_key)
    if job is None:
        raise ApiError(404, f"run {stored.id} has no job '{job_key}'")
    if not any(s.id == step_id for s in job.steps):
        raise ApiError(404, f"job '{job_key}' has no step '{step_id}'")
    attempt = query_int(request, "attempt", job.attempt, low=1, high=job.attempt)
    return stored.id, job, step_id, attempt


def _start(request: Request) -> int:
    raw = request.headers.get("last-event-id", "")
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw) + 1
    return max(query_int(request, "from", 1, low=0), 1)


async def step_logs(request: Request) -> JSONResponse:
    run, job, step, attempt = await _step(request)
    limit = min(query_int(request, "limit", PAGE, low=1), 10_000)
    page = await logs.read(redis_of(request), run, job.key, attempt, step, _start(request), limit)
    body = page.public()
    if page.ended and page.truncated:
        body["lines"].append(logs.truncation_line(page.truncated, page.next - 1))
    return JSONResponse(body)


async def step_log_raw(request: Request) -> StreamingResponse:
    """The whole log as text, one line per line as the step wrote it, for a download."""
    run, job, step, attempt = await _step(request)
    r = redis_of(request)

    async def text() -> AsyncIterator[bytes]:
        nxt = 1
        while True:
            page = await logs.read(r, run, job.key, attempt, step, nxt, PAGE)
            yield b"".join(line["text"].encode() + b"\n" for line in page.lines)
            if not page.lines:
                if page.truncated:
                    yield logs.truncation_line(page.truncated, nxt - 1)["text"].encode() + b"\n"
                return
            nxt = page.next

    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{run}-{job.key}-{step}-{attempt}.log")
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(text(), media_type="text/plain; charset=utf-8", headers=headers)


def _event(line: dict[str, Any]) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (line["seq"], orjson.dumps(line))


async def step_log_events(request: Request) -> StreamingResponse:
    run, job, step, attempt = await _step(request)
    r = redis_of(request)
    start = _start(request)

    async def events() -> AsyncIterator[bytes]:
        nxt = start
        key = logs.log_key(run, job.key, attempt, step)
        while True:
            page = await logs.read(r, run, job.key, attempt, step, nxt, PAGE)
            for line in page.lines:
                yield _event(line)
            nxt = page.next
            if page.ended:
                if page.truncated:
                    yield _event(logs.truncation_line(page.truncated, nxt - 1))
                yield b"event: end\ndata: {}\n\n"
                return
            if not page.lines:
                # wait for the next line (or a keep-alive after FOLLOW_BLOCK_MS)
                await r.xread({key: f"{nxt - 1}-1"}, block=FOLLOW_BLOCK_MS, count=1)
                yield b": keep-alive\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _artifacts(stored: Any) -> list[dict[str, Any]]:
    found = []
    for field, raw in sorted(stored.fields.items()):
        if field.startswith("finished:"):
            job = field.removeprefix("finished:")
            for item in orjson.loads(raw).get("artifacts", []):
                found.append({"job": job, **item})
    return found


async def list_artifacts(request: Request) -> JSONResponse:
    stored = await stored_run(request)
    return JSONResponse(_artifacts(stored))


class _QueueWriter:
    """What the object store writes chunks into (from a worker thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]):
        self.loop, self.queue = loop, queue

    def write(self, data: bytes) -> int:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, bytes(data))
        return len(data)


async def download_artifact(request: Request) -> StreamingResponse:
    stored = await stored_run(request)
    job, artifact, path = (request.path_params[k] for k in ("job", "artifact", "path"))
    item = next(
        (
            a
            for a in _artifacts(stored)
            if a["job"] == job and a["artifact"] == artifact and a["path"] == path
        ),
        None,
    )
    if item is None:
        raise ApiError(404, f"run {stored.id} has no artifact file {job}/{artifact}/{path}")
    bucket = item.get("bucket", subjects.ARTIFACTS_BUCKET)
    objects = await nats_of(request).jetstream().object_store(bucket)
    # the object store checks the bytes against its own digest as they stream; the
    # agent that wrote them could write that digest again later, so it must also be
    # the one recorded when the job finished
    info = await objects.get_info(item["object"])
    digest = base64.urlsafe_b64decode((info.digest or "").removeprefix("SHA-256=") + "==")
    if digest.hex() != item["sha256"]:
        raise ApiError(409, f"artifact {job}/{artifact}/{path} changed after its run recorded it")
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    writer = _QueueWriter(asyncio.get_running_loop(), queue)

    async def fetch() -> None:
        try:
            await objects.get(item["object"], writeinto=writer)  # type: ignore[arg-type]
        finally:
            await asyncio.sleep(0)  # let the writer's last chunks land first
            queue.put_nowait(None)

    async def body() -> AsyncIterator[bytes]:
        task = asyncio.ensure_future(fetch())
        try:
            while (chunk := await queue.get()) is not None:
                yield chunk
            await task  # raises if the object was missing or its digest wrong
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    name = path.rsplit("/", 1)[-1]
    headers = {
        "Content-Length": str(item["size"]),
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Checksum-Sha256": item["sha256"],
    }
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


STEP = "/api/runs/{run}/jobs/{job}/steps/{step}"

VIEWER = authz.run("viewer")

routes = [
    route(f"{STEP}/logs", step_logs, VIEWER),
    route(f"{STEP}/logs/events", step_log_events, VIEWER),
    route(f"{STEP}/logs/raw", step_log_raw, VIEWER),
    route("/api/runs/{run}/artifacts", list_artifacts, VIEWER),
    route("/api/runs/{run}/artifacts/{job}/{artifact}/{path:path}", download_artifact, VIEWER),
]
