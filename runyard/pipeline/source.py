"""Load a YAML or JSON document and remember where every key and value stands.

PyYAML's composer gives each node a start mark; we build the plain data ourselves from
the node tree so each path (`("jobs", "build", "steps", 0, "run")`) maps to the line and
column of its key and of its value. JSON is parsed by `json` (exact syntax errors) and
its positions are read through the YAML composer, JSON being YAML's flow syntax.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from runyard.pipeline.problems import Problem

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based
    style: str | None = None  # YAML scalar style: None (plain), "'", '"', "|", ">"


@dataclass
class Document:
    data: Any
    text: str
    keys: dict[Path, Mark] = field(default_factory=dict)
    values: dict[Path, Mark] = field(default_factory=dict)

    def mark(self, path: Path, *, key: bool = False) -> Mark:
        """Position of `path` (its key when `key`), else of its nearest ancestor."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.keys:
                return self.keys[probe]
            probe = probe[:-1]
        return Mark(1, 1)

    def offset_mark(self, path: Path, offset: int) -> Mark:
        """Position of character `offset` inside the string scalar at `path`."""
        base = self.mark(path)
        value = get_path(self.data, path)
        if base.style in ("|", ">") and isinstance(value, str):
            lines = self.text.splitlines()
            before = value[:offset]
            row = before.count("\n")
            col_in_line = offset - (before.rfind("\n") + 1)
            first = base.line  # first content line (0-based index == base.line)
            while first < len(lines) and not lines[first].strip():
                first += 1
            indent = len(lines[first]) - len(lines[first].lstrip(" ")) if first < len(lines) else 0
            return Mark(base.line + 1 + row, indent + col_in_line + 1)
        if isinstance(value, str) and "\n" not in value:
            quoted = 1 if base.style in ("'", '"') else 0
            return Mark(base.line, base.column + quoted + offset)
        return base


def get_path(data: Any, path: Path) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


class SourceError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


_MAX_DEPTH = 100


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, doc: Document) -> None:
        self.loader = loader
        self.doc = doc
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: Path) -> Any:
        if len(path) > _MAX_DEPTH:
            raise SourceError([_at(node, "document nests too deeply (or refers to itself)")])
        self.doc.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        self.loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                self.problems.append(_at(key_node, "a key must be a plain value"))
                continue
            if key in result:
                self.problems.append(_at(key_node, f"duplicate key '{key}'"))
            child = (*path, key if isinstance(key, str | int) else str(key))
            self.doc.keys[child] = _mark(key_node)
            result[key] = self.build(value_node, child)
        return result


def _mark(node: yaml.Node) -> Mark:
    style = getattr(node, "style", None)
    return Mark(
        node.start_mark.line + 1,
        node.start_mark.column + 1,
        style if isinstance(node, yaml.ScalarNode) else None,
    )


def _at(node: yaml.Node, message: str) -> Problem:
    return Problem(node.start_mark.line + 1, node.start_mark.column + 1, message)


def _compose(text: str) -> tuple[yaml.Node | None, yaml.SafeLoader]:
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node(), loader
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML syntax: {problem}" + (f" ({context})" if context else "")
    if mark is None:
        return Problem(1, 1, message)
    return Problem(mark.line + 1, mark.column + 1, message)


def load(text: str, *, json_syntax: bool = False) -> Document:
    """Parse `text`; raise `SourceError` with positioned problems when it is not valid."""
    doc = Document(data=None, text=text)
    if json_syntax:
        try:
            doc.data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceError([Problem(exc.lineno, exc.colno, f"JSON syntax: {exc.msg}")]) from None
        try:  # positions only; the data came from json
            node, loader = _compose(text)
            if node is not None:
                _Builder(loader, doc).build(node, ())
        except (yaml.YAMLError, SourceError, RecursionError):
            doc.keys.clear()
            doc.values.clear()
        return doc
    try:
        node, loader = _compose(text)
        if node is None:
            raise SourceError([Problem(1, 1, "the file is empty")])
        builder = _Builder(loader, doc)
        doc.data = builder.build(node, ())
    except yaml.YAMLError as exc:
        raise SourceError([_yaml_error(exc)]) from None
    except RecursionError:
        raise SourceError([Problem(1, 1, "document nests too deeply")]) from None
    if builder.problems:
        raise SourceError(builder.problems)
    return doc
