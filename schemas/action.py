"""The action file, `action-datatorch.yaml` (also `action-runyard.yaml`).

Unknown keys are ignored rather than rejected: action files are third-party code written
for DataTorch, and they must run unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ACTION_FILES = ("action-datatorch.yaml", "action-runyard.yaml", "action-datatorch.yml")

InputType = Literal["integer", "float", "string", "boolean", "array"]
Using = Literal["python", "node", "shell", "script", "cmd", "commandline", "docker"]


class ActionModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class ActionInput(ActionModel):
    type: InputType = "string"
    required: bool = False
    default: Any = None
    description: str | None = None


class ActionOutput(ActionModel):
    type: InputType | None = None
    description: str | None = None


class Runs(ActionModel):
    using: Using
    main: str | None = Field(None, description="entry file, relative to the action's folder")
    image: str | None = Field(None, description="docker: image to run")
    args: list[str] = []


class Action(ActionModel):
    name: str
    description: str | None = None
    inputs: dict[str, ActionInput] = {}
    outputs: dict[str, ActionOutput] = {}
    runs: Runs
    cache: bool = False
