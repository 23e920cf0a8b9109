"""Run forms (`triggers.manual.form`, a JSON Schema): the inputs of a manual run are
checked against it, each problem one sentence naming the field."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError


def problems(form: dict[str, Any] | None, inputs: dict[str, Any]) -> list[dict[str, str]]:
    """[{field, message}] for every way `inputs` breaks the form; [] when they fit."""
    if not form:
        return []
    try:
        validator = Draft202012Validator(form)
    except SchemaError as exc:
        return [
            {
                "field": "",
                "message": f"the pipeline's form is not a valid JSON Schema: {exc.message}",
            }
        ]
    found = []
    for error in sorted(validator.iter_errors(inputs), key=lambda e: list(map(str, e.path))):
        where = ".".join(str(p) for p in error.path)
        if error.validator == "required" and not where:
            missing = error.message.split("'")[1] if "'" in error.message else ""
            found.append({"field": missing, "message": f"'{missing}' is required"})
            continue
        found.append(
            {"field": where, "message": f"'{where}': {error.message}" if where else error.message}
        )
    return found
