"""Load a YAML or JSON document and remember where every key and value stands.

PyYAML's composer gives each node a start mark; we build the plain data ourselves from
the node tree so each path (`("jobs", "build", "steps", 0, "run")`) maps to the line and
column of its key and of its value. JSON is parsed by `json` (exact syntax errors) and
its positions are read through the YAML composer, JSON being YAML's flow syntax.

Everything is bounded (the constants below): a text's size, how many values and how much
text it expands to once aliases are followed, how deeply it nests. The expansion is
measured on the node graph, each node once, before anything is built, so a few hundred
bytes of aliases standing for billions of values cost milliseconds, never memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from runyard import bounded
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


class OverBounds(SourceError):
    """The text is refused for its size, expansion or depth (below), not its syntax."""


# Bounds on what one file may make the parser do: a real pipeline is a few KB, a few
# hundred values and a dozen levels deep. Aliases (`*name`) are allowed, but the values
# count as if written out, so a few hundred bytes cannot stand for billions of them.
MAX_SOURCE_BYTES = 512 * 1024
MAX_NODES = 100_000  # mappings, lists and scalars, after aliases and merge keys expand
MAX_TEXT = 4 * MAX_SOURCE_BYTES  # characters of all scalars, after aliases expand
MAX_DEPTH = 64  # mappings and lists inside each other
MAX_NUMBER_CHARS = 100
PURE_PARSER_CHARS = 64 * 1024  # a longer number is no pipeline's, and costs time to convert

TOO_MANY = (
    f"the document expands to more than {MAX_NODES:,} values or {MAX_TEXT:,} characters "
    "(what aliases repeat counts each time)"
)
TOO_DEEP = f"the document nests deeper than {MAX_DEPTH} levels"
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")

try:  # libyaml parses several times faster than PyYAML's pure Python parser
    from yaml import CSafeLoader as _Loader

    _LIBYAML = True
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

    _LIBYAML = False


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that expands to more than `MAX_NODES` values, `MAX_TEXT`
    characters of scalars or `MAX_DEPTH` levels, or refers to itself: measured on the
    graph (each node once, without recursion), before anything is expanded."""
    measured: dict[int, tuple[int, int, int]] = {}  # node → (values, characters, depth)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            kids = [measured[id(k)] for k in _children(node)]
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            values = 1 + sum(k[0] for k in kids)
            chars = own + sum(k[1] for k in kids)
            depth = 1 + max((k[2] for k in kids), default=0)
            if values > MAX_NODES or chars > MAX_TEXT:
                raise OverBounds([_at(node, TOO_MANY)])
            if depth > MAX_DEPTH:
                raise OverBounds([_at(node, TOO_DEEP)])
            measured[key] = (values, chars, depth)
            continue
        if key in measured:
            continue
        if key in open_:
            raise OverBounds([_at(node, "an alias refers to a value that contains it")])
        open_.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if id(kid) not in measured)


class _Builder:
    def __init__(self, loader: Any, doc: Document) -> None:
        self.loader = loader
        self.doc = doc
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.doc.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        if node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
            self.problems.append(_at(node, f"a number longer than {MAX_NUMBER_CHARS} characters"))
            return None
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # 2024-13-45 looks like a date; `!!int ''` like a number
            reason = str(exc) or type(exc).__name__
            self.problems.append(
                _at(node, f"the value '{node.value[:40]}' cannot be read: {reason}")
            )
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        self.loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(_at(key_node, "a key must be a plain value"))
                continue
            key = self._scalar(key_node)
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
    style = getattr(node, "style", None) or None  # libyaml says "" for plain
    return Mark(
        node.start_mark.line + 1,
        node.start_mark.column + 1,
        style if isinstance(node, yaml.ScalarNode) else None,
    )


def _at(node: yaml.Node, message: str) -> Problem:
    return Problem(node.start_mark.line + 1, node.start_mark.column + 1, message)


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    loader = _Loader(text)
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


def _explained(text: str, exc: yaml.YAMLError) -> yaml.YAMLError:
    """PyYAML's own parser says more than libyaml about a syntax error (what it found
    where), at several times the cost: asked only for files of editor size."""
    if not _LIBYAML or len(text) > PURE_PARSER_CHARS:
        return exc
    try:
        yaml.SafeLoader(text).get_single_node()
    except yaml.YAMLError as pure:
        return pure
    except RecursionError:
        return exc
    return exc


def _too_big(text: str) -> Problem | None:
    size = len(text) if len(text) * 4 <= MAX_SOURCE_BYTES else len(text.encode(errors="replace"))
    if size <= MAX_SOURCE_BYTES:
        return None
    return Problem(1, 1, f"the file is {size:,} bytes; the limit is {MAX_SOURCE_BYTES:,}")


def _load_json(text: str, doc: Document) -> Document:
    try:
        doc.data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError([Problem(exc.lineno, exc.colno, f"JSON syntax: {exc.msg}")]) from None
    except RecursionError:
        raise OverBounds([Problem(1, 1, TOO_DEEP)]) from None
    except ValueError as exc:  # a number of 5,000 digits
        raise SourceError([Problem(1, 1, f"JSON cannot be read: {exc}")]) from None
    if bounded.depth(doc.data, MAX_DEPTH) > MAX_DEPTH:
        raise OverBounds([Problem(1, 1, TOO_DEEP)])
    if bounded.count(doc.data, MAX_NODES) > MAX_NODES:
        raise OverBounds([Problem(1, 1, TOO_MANY)])
    try:  # positions only; the data came from json
        node, loader = _compose(text)
        if node is not None:
            _Builder(loader, doc).build(node, ())
    except (yaml.YAMLError, SourceError, RecursionError):
        doc.keys.clear()
        doc.values.clear()
    return doc


def load(text: str, *, json_syntax: bool = False) -> Document:
    """Parse `text`; raise `SourceError` with positioned problems when it is not valid
    or goes past the bounds above."""
    if problem := _too_big(text):
        raise OverBounds([problem])
    doc = Document(data=None, text=text)
    if json_syntax:
        return _load_json(text, doc)
    try:
        node, loader = _compose(text)
        if node is None:
            raise SourceError([Problem(1, 1, "the file is empty")])
        _check_expansion(node)
        builder = _Builder(loader, doc)
        doc.data = builder.build(node, ())
    except yaml.YAMLError as exc:
        raise SourceError([_yaml_error(_explained(text, exc))]) from None
    except RecursionError:
        raise OverBounds([Problem(1, 1, TOO_DEEP)]) from None
    if builder.problems:
        raise SourceError(builder.problems)
    return doc
