"""`ftray eval` and the registry on the session's local Ray: a learnable two-label task, a
candidate that beats the base model (promoted), a worse one (rejected, exit 4), a changed
gate re-applied to its stored evaluation (promoted, rolled back), a forced promotion and the
rollback that restores the previous production model."""

from __future__ import annotations

import json
import re

import pytest


@pytest.fixture(scope="module")
def job(colors_job):
    return colors_job


def _registry(run_cli, job) -> dict[str, str]:
    listed = run_cli("models", "list", str(job[0])).stdout
    return dict(re.findall(r"(model-[0-9a-f]{12})\s+(\w+)", listed))


def test_gate_promotes_rejects_and_rollback_restores(job, run_cli):
    path, root = job
    good = run_cli("eval", str(path))
    assert "gate passed" in good.stdout, good.stdout
    good_id = re.search(r"model id: (model-[0-9a-f]{12}) \(stage: production\)", good.stdout)
    assert good_id, good.stdout
    good_id = good_id.group(1)
    manifest = json.loads(next((root / "evals").glob("*/manifest.json")).read_text())
    assert manifest["incumbent"]["kind"] == "base"
    candidate = manifest["metrics"]["candidate"]
    assert candidate["accuracy"] >= 0.6 and manifest["metrics"]["incumbent"]["accuracy"] == 0
    assert manifest["comparison"]["macro_f1"]["difference_interval"][0] > 0
    assert (root / "evals" / manifest["eval_id"] / "report.html").is_file()
    # the model card keeps the serving configuration the gate approved (a LoRA job: unquantized)
    card = json.loads((root / "models" / good_id / "manifest.json").read_text())
    assert card["serving"] == manifest["serving"] and card["serving"]["quantization"] == "none"

    # barely trained: worse than production on the same held-out examples; `ftray run` stops
    # at the gate and still prints its summary
    barely = ("--set", "train.max_steps=1")
    bad = run_cli("run", str(path), *barely, check=False)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "gate failed" in bad.stdout and "✗ macro_f1 ≥ incumbent + 0" in bad.stdout
    assert re.search(r"macro_f1: incumbent [\d.]+, candidate [\d.]+; gate failed", bad.stdout)
    bad_id = re.search(r"model id: (model-[0-9a-f]{12}) \(stage: rejected\)", bad.stdout).group(1)
    evals = [json.loads(p.read_text()) for p in (root / "evals").glob("*/manifest.json")]
    second = next(e for e in evals if e["eval_id"] != manifest["eval_id"])
    assert second["incumbent"] == {"kind": "adapter", "model_id": good_id, "label": good_id}
    assert _registry(run_cli, job) == {good_id: "production", bad_id: "rejected"}

    # a changed gate is applied to the stored evaluation, with no new answers, and the
    # registry follows its verdict: the rejected model is promoted, then rolled back
    lenient = (
        "--set",
        "eval.gate.min_improvement=-1",
        "--set",
        "eval.gate.require_significant=false",
    )
    regated = run_cli("eval", str(path), *barely, *lenient, "--set", "eval.gate.max_regression=1")
    assert "reused evaluation " + second["eval_id"] in regated.stdout, regated.stdout
    assert "re-applied to the stored evaluation" in regated.stdout
    assert "generating" not in regated.stdout and "gate passed" in regated.stdout
    assert _registry(run_cli, job) == {good_id: "archived", bad_id: "production"}
    stored = json.loads((root / "evals" / second["eval_id"] / "manifest.json").read_text())
    assert stored["gate"]["passed"] and stored["comparison"] == second["comparison"]
    assert "re-applied" in (root / "evals" / second["eval_id"] / "report.md").read_text()
    run_cli("models", "rollback", str(path))
    strict = run_cli("eval", str(path), *barely, check=False)  # the default gate again
    assert strict.returncode == 4 and "re-applied" in strict.stdout, strict.stdout
    assert _registry(run_cli, job) == {good_id: "production", bad_id: "archived"}

    refused = run_cli("models", "promote", str(path), bad_id, check=False)
    assert refused.returncode == 2 and "the gate rejected" in refused.stderr
    run_cli("models", "promote", str(path), bad_id, "--force", "--reason", "test override")
    assert _registry(run_cli, job)[bad_id] == "production"
    rolled = run_cli("models", "rollback", str(path)).stdout
    assert f"production: {good_id}" in rolled
    assert _registry(run_cli, job) == {good_id: "production", bad_id: "archived"}
    shown = json.loads(run_cli("models", "show", str(path), good_id).stdout)
    assert shown["stage"] == "production" and shown["eval_id"] == manifest["eval_id"]

    # re-running the first evaluation reuses it and leaves the registry as it is
    again = run_cli("eval", str(path))
    assert "reused evaluation" in again.stdout
    assert _registry(run_cli, job)[good_id] == "production"
