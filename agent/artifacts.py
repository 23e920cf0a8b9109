"""A finished job's artifacts → the agent's own bucket of the NATS object store.

Each matching file is one object, `<run>/<job>/<artifact>/<path>`, stored with its
SHA-256 (the object store checks it again on every read). An artifact bigger than the
limit is refused whole, with a message, rather than stored in part.

The agent writes the object store's chunk and meta messages itself instead of through
nats-py's `ObjectStore.put`, which reads the bucket back: an agent's NATS identity may
not read any stream, since a read answers on a reply subject the reader chooses, which
would let it publish stored bytes of its own on subjects it may not publish on."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from nats.js import JetStreamContext

from agent.collect import matching_files
from schemas import subjects
from schemas.messages import ArtifactFile, ArtifactSpec

CHUNK = 128 * 1024  # the object store's default chunk size


def object_name(run: str, job: str, artifact: str, path: str) -> str:
    return f"{run}/{job}/{artifact}/{path}"


async def put(js: JetStreamContext, bucket: str, name: str, path: Path) -> tuple[int, str]:
    """Store `path` as object `name` (the object store's own layout: chunks on
    `$O.<bucket>.C.<nuid>`, then the meta message that makes them an object, rolled up
    on its subject); (size, SHA-256 hex)."""
    nuid = uuid.uuid4().hex
    chunks = f"$O.{bucket}.C.{nuid}"
    sha = hashlib.sha256()
    size = count = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            await js.publish(chunks, chunk)
            size, count = size + len(chunk), count + 1
    meta = {
        "name": name,
        "description": f"sha256={sha.hexdigest()}",
        "bucket": bucket,
        "nuid": nuid,
        "size": size,
        "chunks": count,
        "mtime": datetime.now(UTC).isoformat(),
        "digest": "SHA-256=" + base64.urlsafe_b64encode(sha.digest()).decode(),
        "options": {"max_chunk_size": CHUNK},
    }
    key = base64.urlsafe_b64encode(name.encode()).decode()
    await js.publish(f"$O.{bucket}.M.{key}", orjson.dumps(meta), headers={"Nats-Rollup": "sub"})
    return size, sha.hexdigest()


async def upload(
    js: JetStreamContext,
    agent: str,
    workspace: Path,
    run: str,
    job: str,
    specs: list[ArtifactSpec],
    job_ok: bool,
    limit: int,
) -> tuple[list[ArtifactFile], list[str]]:
    """(stored files, problems) for the artifacts this job's outcome asks for."""
    stored: list[ArtifactFile] = []
    problems: list[str] = []
    wanted = [s for s in specs if job_ok or s.if_failed]
    if not wanted:
        return stored, problems
    bucket = subjects.agent_artifacts_bucket(agent)
    for spec in wanted:
        files = matching_files(workspace, spec.path)
        size = sum(p.stat().st_size for _, p in files)
        if not files:
            problems.append(f"artifact '{spec.name}': no file matches {spec.path}")
            continue
        if size > limit:
            problems.append(
                f"artifact '{spec.name}' is {size} bytes, over the limit of {limit}; not stored"
            )
            continue
        for rel, path in files:
            name = object_name(run, job, spec.name, rel)
            size, digest = await put(js, bucket, name, path)
            stored.append(
                ArtifactFile(artifact=spec.name, path=rel, object=name, size=size, sha256=digest)
            )
    return stored, problems
