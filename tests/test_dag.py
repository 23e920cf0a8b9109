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


def test_long_chains_need_no_recursion() -> None:
    """Thousands of jobs, each needing the one before: no RecursionError."""
    n = 20_000
    chain = {f"j{i}": [f"j{i - 1}"] if i else [] for i in range(n)}
    assert find_cycle(chain) is None
    assert topological_order(chain) == [f"j{i}" for i in range(n)]
    chain["j0"] = [f"j{n - 1}"]
    cycle = find_cycle(chain)
    assert cycle is not None and len(cycle) == n + 1 and cycle[0] == cycle[-1] == "j0"
