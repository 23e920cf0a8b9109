"""Manual runs with forms: inputs checked against the JSON Schema (422 with each bad
field), defaults filled and visible as ${{ input.* }}; the run button's role."""

from __future__ import annotations

from tests.system.harness import System, step_of

FORM = """
name: Train
triggers:
  manual:
    role: {role}
    form:
      type: object
      required: [lr]
      properties:
        epochs: {type: integer, minimum: 1, default: 10}
        lr: {type: number}
        mode: {enum: [fast, full], default: fast}
jobs:
  train:
    steps:
      - id: s
        run: |
          echo "::seen::\\"${{ input.epochs }}/${{ input.lr }}/${{ input.mode }}\\""
"""


async def test_form_inputs_are_checked_and_defaults_filled(system: System) -> None:
    await system.project("p")
    await system.agent("a", projects=["p"])
    await system.pipeline("p", FORM.replace("{role}", "maintainer"))
    assert system.http is not None
    path = "/api/projects/p/pipelines/Train/runs"
    bad = await system.http.post(path, json={"inputs": {"epochs": 0, "mode": "slow"}})
    assert bad.status_code == 422
    fields = {p["field"]: p["message"] for p in bad.json()["problems"]}
    assert set(fields) == {"epochs", "lr", "mode"}
    assert "'lr' is required" in fields["lr"]
    assert "minimum" in fields["epochs"] or "less than" in fields["epochs"]
    run_id = await system.start_run("p", "Train", lr=0.5)
    run = await system.wait_run(run_id)
    assert run["status"] == "success", run
    assert run["inputs"] == {"epochs": 10, "lr": 0.5, "mode": "fast"}
    assert step_of(run, "train")["outputs"] == {"seen": "10/0.5/fast"}


async def test_the_run_button_needs_its_role(system: System) -> None:
    await system.project("p")
    await system.pipeline("p", FORM.replace("{role}", "OWNER"))
    viewer = await system.call("POST", "/api/keys", json={"name": "v", "roles": {"p": "viewer"}})
    owner = await system.call("POST", "/api/keys", json={"name": "o", "roles": {"p": "owner"}})
    assert system.http is not None
    path = "/api/projects/p/pipelines/Train/runs"
    body = {"inputs": {"lr": 1}}
    refused = await system.http.post(
        path, json=body, headers={"Authorization": f"Bearer {viewer['key']}"}
    )
    assert refused.status_code == 403
    assert "needs the role owner" in refused.json()["error"]
    allowed = await system.http.post(
        path, json=body, headers={"Authorization": f"Bearer {owner['key']}"}
    )
    assert allowed.status_code == 202
    made = await system.http.post(
        "/api/keys", json={"name": "x"}, headers={"Authorization": f"Bearer {owner['key']}"}
    )
    assert made.status_code == 403
