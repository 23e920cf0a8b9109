"""JSON from strangers within bounds: depth and size measured without recursion."""

from __future__ import annotations

import pytest

from runyard import bounded


def test_depth_and_count() -> None:
    assert bounded.depth(1, 5) == 0
    assert bounded.depth({"a": [1, {"b": []}]}, 5) == 4
    deep: list[object] = []
    for _ in range(100_000):  # far past Python's recursion limit
        deep = [deep]
    assert bounded.depth(deep, 64) == 65  # stops counting past the limit
    assert bounded.count([1, [2, 3], {"a": 4}], 100) == 7
    assert bounded.count(list(range(1000)), 10) == 11


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[" * 100_000 + "]" * 100_000, "nests deeper than 64 levels"),
        ("[" * 65 + "]" * 65, "nests deeper than 64 levels"),
        ("{not json", "not valid JSON"),
        ("1" * 5000, "not valid JSON"),
        ('"\\ud800"', "not valid JSON"),
    ],
)
def test_loads_refuses_with_a_sentence(text: str, said: str) -> None:
    with pytest.raises(bounded.JsonRefused, match=said):
        bounded.loads(text)


def test_loads_reads_json() -> None:
    assert bounded.loads(b'{"a": [1, 2.5, null, true]}') == {"a": [1, 2.5, None, True]}
    assert bounded.loads("[" * 64 + "]" * 64) is not None
