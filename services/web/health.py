"""`GET /api/health`: whether this web service can reach what it needs, checked now.

Each dependency gets one round trip, bounded by `PROBE_SECONDS`: Valkey a PING, NATS a
flush (a PING/PONG with the server). The answer is 200 when both answer, else 503, with
each one's state, so a load balancer takes the replica out and a person sees why:

    {"ok": false, "valkey": {"ok": false, "error": "…"}, "nats": {"ok": true, "ms": 0.4}}
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

PROBE_SECONDS = 2.0


async def _probe(check: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), PROBE_SECONDS)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {PROBE_SECONDS:g} s"}
    except Exception as exc:  # any failure is the dependency's state, not ours
        return {"ok": False, "error": str(exc) or type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


async def health(request: Request) -> JSONResponse:
    state = request.app.state

    async def nats() -> None:
        if not state.nats.is_connected:
            raise ConnectionError("not connected (reconnecting)")
        await state.nats.flush(timeout=PROBE_SECONDS)

    valkey, bus = await asyncio.gather(_probe(state.redis.ping), _probe(nats))
    ok = valkey["ok"] and bus["ok"]
    return JSONResponse({"ok": ok, "valkey": valkey, "nats": bus}, status_code=200 if ok else 503)
