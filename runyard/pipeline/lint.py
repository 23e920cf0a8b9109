"""The checks that need the whole document: needs graph, cron, globs, expressions.

They read the raw data defensively (anything of the wrong type was already reported by
the shape check), so one run reports every problem of a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runyard import cron, dag, expr_syntax
from runyard.globs import GlobError, compile_glob
from runyard.pipeline.problems import Problem
from runyard.pipeline.shape import suggest
from runyard.pipeline.source import Document, Path


def _dict(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[tuple[int | None, str]]:
    """(index, text) for a string or a list of strings; index None for a lone string."""
    if isinstance(value, str):
        return [(None, value)]
    if isinstance(value, list):
        return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]
    return []


def _at(doc: Document, path: Path, message: str, *, key: bool = False) -> Problem:
    mark = doc.mark(path, key=key)
    return Problem(mark.line, mark.column, message)


def _item(path: Path, index: int | None) -> Path:
    return path if index is None else (*path, index)


def check_needs(doc: Document, jobs: dict[Any, Any]) -> Iterator[Problem]:
    graph: dict[str, list[str]] = {}
    for job_id, job in jobs.items():
        needs = _strings(_dict(job).get("needs"))
        graph[str(job_id)] = [name for _, name in needs]
        for index, name in needs:
            if name not in jobs:
                where = _item(("jobs", job_id, "needs"), index)
                hint = suggest(name, [str(j) for j in jobs if j != job_id])
                yield _at(doc, where, f"job '{job_id}' needs unknown job '{name}'{hint}")
    cycle = dag.find_cycle(graph)
    if cycle:
        yield _at(
            doc,
            ("jobs", cycle[0], "needs"),
            "jobs depend on each other in a cycle: " + " → ".join(cycle),
        )


def check_schedules(doc: Document, triggers: dict[Any, Any]) -> Iterator[Problem]:
    schedules = triggers.get("schedule")
    for i, entry in enumerate(schedules if isinstance(schedules, list) else []):
        entry = _dict(entry)
        timezone = entry.get("timezone", "UTC")
        if isinstance(timezone, str):
            try:
                cron.zone(timezone)
            except ValueError as exc:
                yield _at(doc, ("triggers", "schedule", i, "timezone"), str(exc))
        expression = entry.get("cron")
        if isinstance(expression, str):
            try:
                cron.trigger(expression)
            except ValueError as exc:
                yield _at(doc, ("triggers", "schedule", i, "cron"), str(exc))


GLOB_KEYS = ("branches", "branches-ignore", "tags", "tags-ignore", "paths", "paths-ignore")


def _glob_places(data: dict[Any, Any]) -> Iterator[tuple[Path, Any]]:
    triggers = _dict(data.get("triggers"))
    for event in ("push", "pull_request"):
        for key in GLOB_KEYS:
            yield ("triggers", event, key), _dict(triggers.get(event)).get(key)
    for job_id, job in _dict(data.get("jobs")).items():
        job = _dict(job)
        yield ("jobs", job_id, "test-results"), job.get("test-results")
        artifacts = job.get("artifacts")
        for i, artifact in enumerate(artifacts if isinstance(artifacts, list) else []):
            yield ("jobs", job_id, "artifacts", i, "path"), _dict(artifact).get("path")


def check_globs(doc: Document, data: dict[Any, Any]) -> Iterator[Problem]:
    for path, value in _glob_places(data):
        for index, pattern in _strings(value):
            try:
                compile_glob(pattern)
            except GlobError as exc:
                yield _at(doc, _item(path, index), str(exc))


def _walk_strings(value: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from _walk_strings(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _walk_strings(child, (*path, i))


MAX_EXPRESSIONS = 5_000  # in one file; each costs a parse, and real files hold dozens
MAX_MATRIX = 256  # job instances one matrix may make (GitHub's limit too)


def check_expressions(doc: Document) -> Iterator[Problem]:
    seen = 0
    for path, text in _walk_strings(doc.data, ()):
        try:
            spans = expr_syntax.find(text)
        except expr_syntax.ExpressionSyntaxError as exc:
            mark = doc.offset_mark(path, exc.offset)
            yield Problem(mark.line, mark.column, str(exc))
            continue
        seen += len(spans)
        if seen > MAX_EXPRESSIONS:
            yield _at(doc, path, f"the file holds more than {MAX_EXPRESSIONS:,} expressions")
            return
        bare_if = not spans and path and path[-1] == "if"  # `if: success()` needs no braces
        if bare_if and (error := expr_syntax.check(text.strip())):
            yield _at(doc, path, error)
        for span in spans:
            if error := expr_syntax.check(span.source):
                mark = doc.offset_mark(path, span.start)
                yield Problem(mark.line, mark.column, error)


def check_jobs(doc: Document, jobs: dict[Any, Any]) -> Iterator[Problem]:
    """Step ids unique within a job; matrix axes with values."""
    for job_id, job in jobs.items():
        job = _dict(job)
        seen: set[str] = set()
        steps = job.get("steps")
        for i, step in enumerate(steps if isinstance(steps, list) else []):
            step_id = _dict(step).get("id")
            if isinstance(step_id, str):
                if step_id in seen:
                    yield _at(
                        doc,
                        ("jobs", job_id, "steps", i, "id"),
                        f"step id '{step_id}' is used twice in job '{job_id}'",
                    )
                seen.add(step_id)
        matrix = _dict(_dict(job.get("strategy")).get("matrix"))
        yield from _matrix_size(doc, job_id, matrix)
        for axis, values in matrix.items():
            if values == []:
                yield _at(
                    doc,
                    ("jobs", job_id, "strategy", "matrix", axis),
                    f"matrix axis '{axis}' of job '{job_id}' has no values",
                )
            if axis in ("include", "exclude") and isinstance(values, list):
                for i, entry in enumerate(values):
                    if not isinstance(entry, dict):
                        yield _at(
                            doc,
                            ("jobs", job_id, "strategy", "matrix", axis, i),
                            f"matrix '{axis}' entries must be mappings of axis: value",
                        )


def _matrix_size(doc: Document, job_id: Any, matrix: dict[Any, Any]) -> Iterator[Problem]:
    includes = matrix.get("include")
    count = len(includes) if isinstance(includes, list) else 0
    product = 1
    for axis, values in matrix.items():
        if axis not in ("include", "exclude") and isinstance(values, list):
            product *= max(len(values), 1)
        if product > MAX_MATRIX:
            break
    if count + product > MAX_MATRIX:
        yield _at(
            doc,
            ("jobs", job_id, "strategy", "matrix"),
            f"the matrix of job '{job_id}' makes more than {MAX_MATRIX} jobs (the limit)",
        )


def semantic_problems(doc: Document) -> list[Problem]:
    data = _dict(doc.data)
    jobs = _dict(data.get("jobs"))
    return [
        *check_needs(doc, jobs),
        *check_schedules(doc, _dict(data.get("triggers"))),
        *check_globs(doc, data),
        *check_expressions(doc),
        *check_jobs(doc, jobs),
    ]
