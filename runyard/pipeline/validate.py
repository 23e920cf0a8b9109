"""One entry point: text in, a `Pipeline` or every problem out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runyard.pipeline.lint import semantic_problems
from runyard.pipeline.problems import Problem
from runyard.pipeline.shape import shape_problems
from runyard.pipeline.source import Document, SourceError, load
from schemas.pipeline import Pipeline


@dataclass
class Result:
    file: str
    pipeline: Pipeline | None = None
    document: Document | None = None
    problems: list[Problem] = field(default_factory=list)

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
        return result
    result.document = doc
    found = {*shape_problems(doc, Pipeline), *semantic_problems(doc)}
    result.problems = sorted(Problem(p.line, p.column, p.message, file) for p in found)
    if not result.problems:
        result.pipeline = Pipeline.model_validate(doc.data)
    return result


def validate_file(path: Path) -> Result:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Result(str(path), problems=[Problem(1, 1, f"cannot read file: {reason}", str(path))])
    return validate_text(text, str(path))
