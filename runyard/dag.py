"""Graphs of `needs`: cycle finding and topological order. Pure.

Both walk depth-first with an explicit stack, not recursion: a chain of thousands of
jobs, each needing the one before, is a valid (if odd) pipeline."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping


def _known(graph: Mapping[str, Iterable[str]], node: str) -> Iterator[str]:
    """`node`'s edges to nodes of the graph (others are reported elsewhere)."""
    return (nxt for nxt in graph.get(node, ()) if nxt in graph)


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """The first cycle found, as `[a, b, …, a]`, visiting nodes in the mapping's order.

    Edges to unknown nodes are ignored (they are reported elsewhere)."""
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        path = [start]
        on_path = {start}
        edges = [_known(graph, start)]
        while edges:
            nxt = next(edges[-1], None)
            if nxt is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                edges.pop()
            elif nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                edges.append(_known(graph, nxt))
    return None


def topological_order(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Nodes so that each comes after everything it needs; ties keep the mapping's order.

    The graph must be acyclic (lint checks that first)."""
    seen: set[str] = set()
    order: list[str] = []
    for start in graph:
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, _known(graph, start))]
        while stack:
            node, edges = stack[-1]
            nxt = next((n for n in edges if n not in seen), None)
            if nxt is None:
                order.append(node)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, _known(graph, nxt)))
    return order
