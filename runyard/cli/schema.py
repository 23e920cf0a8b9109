"""`runyard schema pipeline|action`: JSON Schema for editors, generated from the models."""

from __future__ import annotations

import json

import click
from pydantic import BaseModel

from schemas.action import Action
from schemas.pipeline import Pipeline

MODELS: dict[str, type[BaseModel]] = {"pipeline": Pipeline, "action": Action}


def json_schema(kind: str) -> dict[str, object]:
    schema = MODELS[kind].model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


@click.command()
@click.argument("kind", type=click.Choice(sorted(MODELS)))
def schema(kind: str) -> None:
    """Print the JSON Schema of a pipeline or action file.

    \b
    Example:
      runyard schema pipeline > pipeline.schema.json
    """
    click.echo(json.dumps(json_schema(kind), indent=2))
