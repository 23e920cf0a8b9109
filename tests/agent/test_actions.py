"""Finding actions offline: copies under RUNYARD_ACTIONS_DIR, and a failed fetch that
says which URL, why, and where a mirror goes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.actions import ActionCache, ActionError, copied_action
from schemas.pipeline import ActionRef
from services.stack import free_port
from tests.conftest import ROOT

EXAMPLE_ACTIONS = ROOT / "examples" / "actions"


@pytest.mark.parametrize(
    ("ref", "found"),
    [
        (ActionRef(name="datatorch/add", tag="v1"), "datatorch/add@v1"),
        (ActionRef(name="datatorch/average", tag="v1"), "datatorch/average@v1"),
        (ActionRef(name="datatorch/add", tag="v2"), None),  # no copy of that tag
        (ActionRef(name="datatorch/add"), None),  # no untagged copy
        (ActionRef(name="../..", tag="x"), None),  # outside the folder
        (ActionRef(name="datatorch/add", tag="../../add@v1"), None),
        # its own git URL: always cloned, a copy never stands in for it
        (ActionRef(name="datatorch/add", tag="v1", git="https://example.com/x"), None),
    ],
)
def test_copied_actions(ref: ActionRef, found: str | None) -> None:
    folder = copied_action(ref, str(EXAMPLE_ACTIONS))
    assert folder == (EXAMPLE_ACTIONS / found if found else None)


def test_no_copies_without_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNYARD_ACTIONS_DIR", raising=False)
    assert copied_action(ActionRef(name="datatorch/add", tag="v1")) is None


def test_a_copy_loads_without_git(tmp_path: Path) -> None:
    cache = ActionCache(tmp_path / "cache", base="http://127.0.0.1:1/", copies=str(EXAMPLE_ACTIONS))
    loaded = asyncio.run(cache.load(ActionRef(name="datatorch/add", tag="v1"), tmp_path))
    assert loaded.action.name == "Python Add"
    assert loaded.commit is None  # a folder, like a pipeline's own actions
    assert not (tmp_path / "cache").exists()


def test_an_unreachable_action_names_its_url_and_the_way_out(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    cache = ActionCache(tmp_path / "cache", base=base, copies="")
    with pytest.raises(ActionError) as caught:
        asyncio.run(cache.load(ActionRef(name="datatorch/add", tag="v1"), tmp_path))
    message = str(caught.value)
    url = f"{base}datatorch-actions/add"
    assert message.startswith(f"action 'datatorch/add@v1' could not be fetched from {url}: ")
    assert "Failed to connect to 127.0.0.1" in message  # git's reason
    assert "point RUNYARD_ACTIONS_BASE on the agent at a mirror" in message
    assert "RUNYARD_ACTIONS_DIR" in message
    assert "docs/actions.md#offline-and-mirrors" in message
