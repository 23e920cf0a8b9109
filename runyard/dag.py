"""Graphs of `needs`: cycle finding and topological order. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """The first cycle found, as `[a, b, …, a]`, visiting nodes in the mapping's order.

    Edges to unknown nodes are ignored (they are reported elsewhere)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def topological_order(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Nodes so that each comes after everything it needs; ties keep the mapping's order.

    The graph must be acyclic (lint checks that first)."""
    done: set[str] = set()
    order: list[str] = []

    def visit(node: str) -> None:
        if node in done:
            return
        done.add(node)
        for nxt in graph.get(node, ()):
            if nxt in graph:
                visit(nxt)
        order.append(node)

    for node in graph:
        visit(node)
    return order
