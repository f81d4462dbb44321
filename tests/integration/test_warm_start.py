"""Warm starts on the session's local Ray: a run with `train.init_from: production` starts
from the production adapter's weights (its first training loss is the parent's validation
loss, far below the base model's), its model card names the parent, `ftray models show`
prints the lineage, the same parent reuses the run, and an unknown parent exits 2."""

from __future__ import annotations

import json
import re

import pytest


def _manifest(root, *folder) -> dict:
    return json.loads((root.joinpath(*folder) / "manifest.json").read_text())


# Slow tier: its parts are in `make test`: warm starts of LoRA, QLoRA and full children in
# tests/unit/test_warm_start.py, the registry and `ftray run` in the tests of the pipeline.
@pytest.mark.slow
def test_a_warm_start_continues_the_production_model(colors_job, run_cli):
    path, root = colors_job
    if "production" not in run_cli("models", "list", str(path)).stdout:  # run alone
        run_cli("eval", str(path))
    parent_id = re.search(
        r"(model-[0-9a-f]{12})\s+production", run_cli("models", "list", str(path)).stdout
    ).group(1)
    parent_run = _manifest(root, "runs", _manifest(root, "models", parent_id)["run_id"])
    warm = ["--set", "train.max_steps=2", "--set", "train.log_every=1"]
    warm += ["--set", "eval.max_examples=20"]
    child = run_cli("eval", str(path), "--set", "train.init_from=production", *warm, check=False)
    assert child.returncode in (0, 4), child.stdout + child.stderr
    assert f"warm start from {parent_id}" in child.stdout, child.stdout
    child_id = re.search(r"model id: (model-[0-9a-f]{12})", child.stdout).group(1)
    card = _manifest(root, "models", child_id)
    assert card["parent"] == parent_id
    run = _manifest(root, "runs", card["run_id"])
    assert run["parent"] == parent_id and run["spec"]["init_from"] == parent_id
    # the loss of step 1 is measured before its update: on the parent's weights it is the
    # parent's validation loss (same task, same tokens); from the base it is ~1.3 higher
    first = run["loss_history"][0]
    assert first[0] == 1
    assert abs(first[1] - parent_run["metrics"]["best_eval_loss"]) < 0.1, (first, parent_run)
    assert parent_run["loss_first"] - first[1] > 0.5, "the parent started from the base"

    shown = json.loads(run_cli("models", "show", str(path), child_id).stdout)
    assert shown["lineage"] == [child_id, parent_id, "tiny"]
    assert shown["parent"] == parent_id and shown["lora"]["r"] == 8

    # the same parent (by id now): the finished run is reused, nothing trains
    again = run_cli("train", str(path), "--set", f"train.init_from={parent_id}", *warm[:4])
    assert f"reused run {card['run_id']}" in again.stdout, again.stdout

    unknown = run_cli(
        "train", str(path), "--set", "train.init_from=model-000000000000", check=False
    )
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert "error: train.init_from: no model 'model-000000000000'" in unknown.stderr
    assert parent_id in unknown.stderr and "Traceback" not in unknown.stderr
