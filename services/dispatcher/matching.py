"""Which pipelines an event starts (no I/O): the `triggers` of DESIGN.md §2.

- `push`: a branch push needs a match in `branches` (and none in `branches-ignore`)
  when either is given; a tag push likewise with `tags`; with only branch filters, tag
  pushes do not match, and the other way round; with no filter, every push matches.
  `paths` / `paths-ignore` then need a changed file that matches and is not ignored.
  Hosts that send no file list (Bitbucket, pull requests) skip the path filters.
- `pull_request`: the action in `types`, the base branch through `branches`.
- `pipeline`: a run of the named pipeline of the same project ended with `status`.
- Events aimed at one pipeline (run button, schedule, generic webhook) start that one;
  a generic webhook only if the pipeline has `triggers.webhook`.
"""

from __future__ import annotations

from runyard.globs import matches
from schemas.messages import TriggerEvent
from schemas.pipeline import Pipeline, Push


def _passes(include: list[str], exclude: list[str], value: str) -> bool:
    if include and not matches(include, value):
        return False
    return not (exclude and matches(exclude, value))


def _paths(include: list[str], exclude: list[str], event: TriggerEvent) -> bool:
    if not event.paths_known or not (include or exclude):
        return True
    return any(_passes(include, exclude, path) for path in event.paths)


def _push(spec: Push, event: TriggerEvent) -> bool:
    branch_filter = bool(spec.branches or spec.branches_ignore)
    tag_filter = bool(spec.tags or spec.tags_ignore)
    if event.tag is not None:
        if branch_filter and not tag_filter:
            return False
        ok = not tag_filter or _passes(spec.tags, spec.tags_ignore, event.tag)
    elif event.branch is not None:
        if tag_filter and not branch_filter:
            return False
        ok = not branch_filter or _passes(spec.branches, spec.branches_ignore, event.branch)
    else:
        return False
    return ok and _paths(spec.paths, spec.paths_ignore, event)


def starts(pipeline: Pipeline, event: TriggerEvent) -> bool:
    triggers = pipeline.triggers
    if event.pipeline is not None:
        return event.pipeline == pipeline.name and (
            event.kind != "webhook" or triggers.webhook is not None
        )
    if event.kind in ("push", "tag"):
        return triggers.push is not None and _push(triggers.push, event)
    if event.kind == "pull_request":
        spec, pr = triggers.pull_request, event.pull_request
        return (
            spec is not None
            and pr is not None
            and pr.action in spec.types
            and _passes(spec.branches, spec.branches_ignore, pr.base)
            and _paths(spec.paths, spec.paths_ignore, event)
        )
    if event.kind == "pipeline":
        chain = triggers.pipeline
        upstream = event.payload.get("pipeline")
        status = event.payload.get("status")
        return (
            chain is not None
            and chain.name == upstream
            and upstream != pipeline.name
            and chain.status in ("any", status)
        )
    return False
