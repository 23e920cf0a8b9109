"""One entry point: text in, a `Pipeline` or every problem out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runyard.pipeline.lint import semantic_problems
from runyard.pipeline.problems import Problem
from runyard.pipeline.shape import shape_problems
from runyard.pipeline.source import MAX_SOURCE_BYTES, Document, OverBounds, SourceError, load
from schemas.pipeline import Pipeline


@dataclass
class Result:
    file: str
    pipeline: Pipeline | None = None
    document: Document | None = None
    problems: list[Problem] = field(default_factory=list)
    over_bounds: bool = False  # refused for its size, expansion or depth (source.py)

    @property
    def ok(self) -> bool:
        return self.pipeline is not None


def is_json(name: str) -> bool:
    return name.lower().endswith(".json")


def validate_text(text: str, file: str = "pipeline.yaml") -> Result:
    """Parse and check a pipeline file; every problem is reported, sorted by position."""
    result = Result(file)
    try:
        doc = load(text, json_syntax=is_json(file))
    except SourceError as exc:
        result.problems = [Problem(p.line, p.column, p.message, file) for p in exc.problems]
        result.over_bounds = isinstance(exc, OverBounds)
        return result
    result.document = doc
    found = {*shape_problems(doc, Pipeline), *semantic_problems(doc)}
    result.problems = sorted(Problem(p.line, p.column, p.message, file) for p in found)
    if not result.problems:
        result.pipeline = Pipeline.model_validate(doc.data)
    return result


def validate_file(path: Path) -> Result:
    """`validate_text` of a file, reading no more of it than the size limit allows."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SOURCE_BYTES + 1)
        if len(data) > MAX_SOURCE_BYTES:
            message = f"the file is over the limit of {MAX_SOURCE_BYTES:,} bytes"
            return Result(str(path), problems=[Problem(1, 1, message, str(path))], over_bounds=True)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Result(str(path), problems=[Problem(1, 1, f"cannot read file: {reason}", str(path))])
    return validate_text(text, str(path))
