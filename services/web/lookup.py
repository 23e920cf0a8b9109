"""What an API handler addresses, looked up or answered with 404: the connections the
app shares, a project, a pipeline, a run."""

from __future__ import annotations

from nats.aio.client import Client
from starlette.requests import Request

from services.store import records
from services.store import runs as store
from services.store.connection import Redis
from services.web.errors import ApiError


def redis_of(request: Request) -> Redis:
    r: Redis = request.app.state.redis
    return r


def nats_of(request: Request) -> Client:
    nc: Client = request.app.state.nats
    return nc


async def project(request: Request) -> str:
    name = request.path_params["project"]
    if not await records.project_exists(redis_of(request), name):
        raise ApiError(404, f"no project '{name}'")
    return str(name)


async def pipeline(request: Request) -> records.PipelineRecord:
    name = await project(request)
    try:
        return await records.get_pipeline(redis_of(request), name, request.path_params["name"])
    except records.NotFound as exc:
        raise ApiError(404, str(exc)) from None


async def stored_run(request: Request) -> store.StoredRun:
    run_id = request.path_params["run"]
    stored = await store.load_run(redis_of(request), run_id)
    if stored is None:
        raise ApiError(404, f"no run '{run_id}' (a run just started appears within moments)")
    return stored
