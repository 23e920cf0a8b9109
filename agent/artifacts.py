"""A finished job's artifacts → the NATS object store (`ry-artifacts`).

Each matching file is one object, `<run>/<job>/<artifact>/<path>`, stored with its
SHA-256 (the object store checks it again on every read). An artifact bigger than the
limit is refused whole, with a message, rather than stored in part."""

from __future__ import annotations

import hashlib
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import ObjectMeta

from agent.collect import matching_files
from schemas import subjects
from schemas.messages import ArtifactFile, ArtifactSpec


def object_name(run: str, job: str, artifact: str, path: str) -> str:
    return f"{run}/{job}/{artifact}/{path}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
    store = await js.object_store(subjects.agent_artifacts_bucket(agent))
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
            digest = _sha256(path)
            with path.open("rb") as f:
                info = await store.put(
                    name, f, meta=ObjectMeta(name=name, description=f"sha256={digest}")
                )
            stored.append(
                ArtifactFile(
                    artifact=spec.name, path=rel, object=name, size=info.size or 0, sha256=digest
                )
            )
    return stored, problems
