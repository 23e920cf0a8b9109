"""What a finished job leaves behind: its test summary (JUnit XML) and its stored
artifacts, each problem kept as an error rather than holding the job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from nats.js import JetStreamContext

from agent import artifacts, junit
from agent.collect import matching_files
from schemas.messages import ArtifactFile, JobFinish, TestSummary
from schemas.status import Status


@dataclass
class Collected:
    artifacts: list[ArtifactFile] = field(default_factory=list)
    tests: TestSummary | None = None
    errors: list[str] = field(default_factory=list)


async def collect(
    js: JetStreamContext, agent: str, workspace: Path, finish: JobFinish
) -> Collected:
    """The job's test results and artifacts; what failed goes into `errors`."""
    found = Collected()
    if finish.test_results:
        reports = await asyncio.to_thread(matching_files, workspace, finish.test_results)
        summaries = []
        for rel, path in reports:
            try:
                summaries.append(await asyncio.to_thread(junit.parse_file, path, rel))
            except junit.ReportError as exc:
                found.errors.append(str(exc))
        if summaries:
            found.tests = junit.merge(summaries)
    try:
        stored, problems = await artifacts.upload(
            js,
            agent,
            workspace,
            finish.run,
            finish.job,
            finish.artifacts,
            finish.status == Status.SUCCESS,
            finish.artifact_limit,
        )
    except Exception as exc:  # the object store refused: say so, do not hold the job
        stored, problems = [], [f"artifacts not stored: {exc}"]
    found.artifacts += stored
    found.errors += problems
    return found
