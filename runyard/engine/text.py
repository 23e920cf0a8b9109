"""How a value reads when put into text (scripts, env vars, inputs); no Jinja2 here, so
the agent can use it without loading the expression engine."""

from __future__ import annotations

import json
from typing import Any


def to_text(value: Any) -> str:
    """JSON for structures, `true`/`false` for booleans, "" for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
