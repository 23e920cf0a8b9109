"""A small stand-in for the `datatorch` package, for actions written for DataTorch.

The agent puts this on PYTHONPATH only when the real package is not installed. It speaks
DataTorch's protocol: inputs arrive as JSON in the last command-line argument, and each
output is printed as `::name::<json>`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

_inputs: dict[str, Any] | None = None


def get_inputs(key: str | None = None) -> Any:
    """All inputs as a dict, or the one named `key`."""
    global _inputs
    if _inputs is None:
        try:
            loaded = json.loads(sys.argv[-1])
        except (IndexError, ValueError):
            loaded = {}
        _inputs = loaded if isinstance(loaded, dict) else {}
    return _inputs.get(key) if key else _inputs


def get_input(key: str) -> Any:
    return get_inputs().get(key)


def set_output(name: str, value: Any) -> None:
    print(f"::{name}::{json.dumps(value)}", flush=True)
