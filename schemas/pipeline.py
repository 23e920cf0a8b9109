"""The pipeline file, as people write it (DataTorch's syntax plus the CI peers' keys).

These models mirror the file; `runyard.pipeline.lint` adds the checks that need the
whole document (needs graph, cron, globs, expressions), and the engine compiles a
validated `Pipeline` into a run plan.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
    model_validator,
)

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=100)]
Scalar = str | int | float | bool
Env = dict[str, Scalar]
Minutes = Annotated[float, Field(gt=0)]


def _as_list(value: Any) -> Any:
    """Accept `x` where a list `[x]` is meant (`needs: build`, `runs-on: gpu`)."""
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[str], BeforeValidator(_as_list, json_schema_input_type=str | list[str])]
IdList = Annotated[list[Id], BeforeValidator(_as_list, json_schema_input_type=Id | list[Id])]


class Model(BaseModel):
    # Only the spelling people write is accepted (`runs-on`, never `runs_on`).
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- triggers -----------------------------------------------------------------------


class Manual(Model):
    """Run button, CLI and API. `form` is a JSON Schema for the run's inputs."""

    role: Literal["owner", "maintainer", "viewer"] | None = None
    form: dict[str, Any] | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _lower_role(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Schedule(Model):
    cron: str = Field(description="5 fields (minute hour day month weekday), or 6: seconds first")
    timezone: str = "UTC"


class Push(Model):
    branches: StrList = []
    branches_ignore: StrList = Field([], alias="branches-ignore")
    tags: StrList = []
    tags_ignore: StrList = Field([], alias="tags-ignore")
    paths: StrList = []
    paths_ignore: StrList = Field([], alias="paths-ignore")


PullRequestType = Literal[
    "opened",
    "synchronize",
    "reopened",
    "closed",
    "edited",
    "labeled",
    "unlabeled",
    "ready_for_review",
    "merged",
]


class PullRequest(Model):
    branches: StrList = []
    branches_ignore: StrList = Field([], alias="branches-ignore")
    types: list[PullRequestType] = ["opened", "synchronize", "reopened"]
    paths: StrList = []
    paths_ignore: StrList = Field([], alias="paths-ignore")
    secrets: StrictBool = Field(
        False,
        description="give runs of a fork's pull request the project's secrets (default "
        "false: the fork's code could read them and send them anywhere)",
    )


class Webhook(Model):
    """A generic external event posted to /hooks/generic/<project>/<pipeline>."""


class PipelineTrigger(Model):
    """Chain: start when a run of pipeline `name` (same project) ends with `status`."""

    name: str
    status: Literal["success", "failure", "any"] = "success"
    secrets: StrictBool = Field(
        False,
        description="give this run the project's secrets when the upstream run built a "
        "fork's pull request (default false, as for pull_request)",
    )


class AnnotatorButton(Model):
    """DataTorch's annotator tool; accepted, and fired by an API event."""

    name: str
    icon: str = "brain"
    flow: Literal["2-points", "4-points", "segmentation"] | None = None


def _manual_flag(value: Any) -> Any:
    """`manual: true` (or an empty `manual:`) means a plain run button."""
    return {} if value is True or value is None else value


class Triggers(Model):
    manual: Annotated[
        Manual | None, BeforeValidator(_manual_flag, json_schema_input_type=bool | Manual | None)
    ] = None
    schedule: list[Schedule] = []
    push: Push | None = None
    pull_request: PullRequest | None = None
    webhook: Webhook | None = None
    pipeline: PipelineTrigger | None = None
    annotator_button: AnnotatorButton | None = Field(None, alias="annotatorButton")


# --- actions, steps, jobs -----------------------------------------------------------

ACTION_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)(@(?P<tag>[^\s@]+))?$")


class ActionRef(Model):
    """`org/name@tag`, `./folder` in the pipeline's repository, or this object form."""

    name: str
    tag: str | None = None
    git: str | None = Field(None, description="clone URL; default: RUNYARD_ACTIONS_BASE + name")

    @property
    def is_local(self) -> bool:
        return self.name.startswith(("./", "../"))


def _parse_action(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value.startswith(("./", "../")):
        return {"name": value}
    match = ACTION_RE.match(value)
    if not match:
        raise ValueError(f"action '{value}' is not of the form org/name@tag or ./path")
    return {"name": match["name"], "tag": match["tag"]}


Shell = Literal["bash", "sh", "python"]


class Step(Model):
    id: Id | None = None
    name: str | None = None
    run: str | None = None
    action: Annotated[
        ActionRef | None, BeforeValidator(_parse_action, json_schema_input_type=str | ActionRef)
    ] = None
    shell: Shell = "bash"
    inputs: dict[str, Any] = {}
    env: Env = {}
    if_: str | bool | None = Field(None, alias="if")
    timeout: Minutes | None = None
    continue_on_error: bool = Field(False, alias="continue-on-error")
    working_directory: str | None = Field(None, alias="working-directory")
    cache: bool = False

    @model_validator(mode="after")
    def _run_xor_action(self) -> Step:
        if self.run is not None and self.action is not None:
            raise ValueError("a step has either 'run' or 'action', not both")
        if self.run is None and self.action is None:
            raise ValueError("a step needs 'run' or 'action'")
        return self


RetryWhen = Literal["agent-lost", "failure", "timed-out"]


class Retry(Model):
    max: Annotated[int, Field(ge=0, le=10)] = 2
    when: list[RetryWhen] = ["agent-lost"]


def _retry_count(value: Any) -> Any:
    return {"max": value} if isinstance(value, int) and not isinstance(value, bool) else value


class Strategy(Model):
    matrix: dict[str, list[Any]]
    fail_fast: bool = Field(True, alias="fail-fast")
    max_parallel: Annotated[int, Field(gt=0)] | None = Field(None, alias="max-parallel")


class Artifact(Model):
    name: Id
    path: StrList
    if_failed: bool = Field(False, alias="if-failed")


class Job(Model):
    name: str | None = None
    needs: IdList = []
    runs_on: StrList = Field([], alias="runs-on")
    if_: str | bool | None = Field(None, alias="if")
    timeout: Minutes | None = None
    retry: Annotated[Retry, BeforeValidator(_retry_count, json_schema_input_type=int | Retry)] = (
        Retry()
    )
    strategy: Strategy | None = None
    env: Env = {}
    outputs: dict[str, str] = {}
    working_directory: str | None = Field(None, alias="working-directory")
    continue_on_error: bool = Field(False, alias="continue-on-error")
    steps: Annotated[list[Step], Field(min_length=1)]
    artifacts: list[Artifact] = []
    test_results: StrList = Field([], alias="test-results")


class Repository(Model):
    url: str
    ref: str | None = None


class Concurrency(Model):
    group: str
    cancel_in_progress: bool = Field(False, alias="cancel-in-progress")


def _concurrency_group(value: Any) -> Any:
    return {"group": value} if isinstance(value, str) else value


class Pipeline(Model):
    schema_: str | None = Field(None, alias="$schema")
    project: str | None = Field(None, description="DataTorch's project key; informational")
    name: Annotated[str, Field(min_length=1)]
    triggers: Triggers = Triggers(manual=Manual())
    repository: Repository | None = None
    env: Env = {}
    concurrency: Annotated[
        Concurrency | None,
        BeforeValidator(_concurrency_group, json_schema_input_type=str | Concurrency | None),
    ] = None
    jobs: Annotated[dict[Id, Job], Field(min_length=1)]
