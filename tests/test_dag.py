from __future__ import annotations

from runyard.dag import find_cycle, topological_order


def test_no_cycle() -> None:
    assert find_cycle({"a": [], "b": ["a"], "c": ["a", "b"]}) is None


def test_cycle_is_named_in_order() -> None:
    assert find_cycle({"a": ["c"], "b": ["a"], "c": ["b"]}) == ["a", "c", "b", "a"]


def test_self_need_is_a_cycle() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_unknown_nodes_are_ignored() -> None:
    assert find_cycle({"a": ["ghost"]}) is None


def test_topological_order_keeps_ties_in_order() -> None:
    graph = {"package": ["lint", "test"], "lint": [], "test": [], "docs": []}
    assert topological_order(graph) == ["lint", "test", "package", "docs"]
