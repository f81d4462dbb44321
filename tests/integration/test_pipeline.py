"""`ftray run jobs/tiny.yaml` on the session's local Ray: every stage, every artifact."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import cli, free_port


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ray_address):
    """One full pipeline run of the tiny job into a fresh store; shared by this module."""
    store = tmp_path_factory.mktemp("store")
    port = free_port()
    args = ["run", "jobs/tiny.yaml", "--set", f"storage={store}", "--set", f"serve.port={port}"]
    done = cli(ray_address, *args)
    return store / "tiny", done.stdout, args


def _one(folder):
    entries = [p for p in folder.iterdir() if p.is_dir()]
    assert len(entries) == 1, entries
    return entries[0]


def test_run_prints_every_stage_and_the_summary(tiny_run):
    _, out, _ = tiny_run
    for stage in ("prepare", "assess", "train", "evaluate", "register", "serve"):
        assert f"✓ {stage}" in out
    assert "summary" in out
    assert re.search(r"held-out exact match: incumbent \d+\.\d%, candidate \d+\.\d%", out)
    assert re.search(r"macro_f1: incumbent \d\.\d{3}, candidate \d\.\d{3}; gate passed", out)
    assert re.search(r"model id model-[0-9a-f]{12} \(stage: production\)", out)
    assert re.search(r"assess: fine-tune \(prompted base model macro_f1 \d\.\d{3}", out)
    assert re.search(r"general_ppl \(forgetting probe\): base [\d.e+]+, candidate", out)
    assert re.search(r"answer from model-[0-9a-f]{12}:", out)


def test_dataset_accounts_for_every_record(tiny_run):
    root, _, _ = tiny_run
    dataset = _one(root / "datasets")
    manifest = json.loads((dataset / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["input"] == 360  # rows of data/banking77/quickstart.csv
    assert counts["input"] == sum(counts[s] for s in ("train", "validation", "eval", "quarantine"))
    assert counts["validation"] > 0
    for split in ("train", "validation", "eval", "quarantine"):
        rows = pq.read_table(dataset / split).num_rows if counts[split] else 0
        assert rows == counts[split], split
    train = pq.read_table(dataset / "train").to_pylist()[0]
    assert len(train["input_ids"]) == len(train["labels"])
    assert train["labels"][0] == -100, "prompt tokens are masked out of the loss"
    assert any(label != -100 for label in train["labels"])
    if counts["quarantine"]:
        bad = pq.read_table(dataset / "quarantine").to_pylist()[0]
        assert bad["rule"] and bad["reason"] and bad["row"] >= 2


def test_run_checkpoint_and_model_card(tiny_run):
    root, _, _ = tiny_run
    run = json.loads((_one(root / "runs") / "manifest.json").read_text())
    assert run["loss_first"] is not None and run["loss_last"] is not None
    assert run["kind"] == "adapter" and run["method"] == "lora"
    adapter = run["weights_uri"]
    assert adapter.startswith(str(root / "runs"))
    assert (Path(adapter) / "adapter_model.safetensors").is_file()
    assert run["metrics"]["best_eval_loss"] == min(loss for _, loss in run["eval_history"])
    model_dir = _one(root / "models")
    card = json.loads((model_dir / "manifest.json").read_text())
    dataset_id = _one(root / "datasets").name
    assert card["dataset_id"] == dataset_id
    assert card["run_id"] == run["run_id"]
    assert card["eval_id"] == _one(root / "evals").name
    assert len(card["spec_hash"]) == 64
    assert card["code_version"]
    assert (model_dir / "adapter" / "adapter_config.json").is_file()
    assert (model_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert card["kind"] == "adapter"


def test_evaluation_outputs_and_metrics(tiny_run):
    root, _, _ = tiny_run
    evaluation = _one(root / "evals")
    metrics = json.loads((evaluation / "manifest.json").read_text())["metrics"]
    outputs = pq.read_table(evaluation / "outputs").to_pylist()
    assert len(outputs) == metrics["examples"] == 8
    assert {"prompt", "completion", "candidate_output", "incumbent_output"} <= set(outputs[0])
    assert {"candidate_confidence", "candidate_label", "incumbent_unsupported"} <= set(outputs[0])
    for name in ("candidate", "incumbent"):
        assert 0.0 <= metrics[name]["exact_match"] <= 1.0
        assert metrics[name]["output_tokens"]["mean"] > 0
    assert (evaluation / "report.html").is_file() and (evaluation / "report.md").is_file()
    # the forgetting probe: meaningless for a random model, but measured and finite
    general = metrics["general_ppl"]
    assert all(math.isfinite(general[k]) and general[k] > 0 for k in general), general
    assert general["ratio"] == pytest.approx(general["candidate"] / general["base"], rel=1e-3)
    assert "## Forgetting" in (evaluation / "report.md").read_text()
    # W&B (offline): the evaluation's run, in the trained model's group, holds the metrics,
    # the verdict and the report
    run_id = _one(root / "runs").name
    (wandb_run,) = (evaluation / "wandb").glob(f"offline-run-*-{evaluation.name}")
    records = b"".join(f.read_bytes() for f in wandb_run.glob("*.wandb"))
    for key in (b"evaluation/candidate/macro_f1", b"evaluation/general_ppl", b"gate/verdict"):
        assert key in records, key
    assert run_id.encode() in records, "the training run's id is the evaluation run's group"
    assert list((wandb_run / "files" / "media" / "html").glob("report_*.html"))


def test_rerun_reuses_every_artifact(tiny_run, run_cli):
    root, _, args = tiny_run
    before = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    out = run_cli("eval", *args[1:]).stdout
    for what in ("dataset", "run", "evaluation"):
        assert f"reused {what}" in out
    after = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert after == before, "a reused stage writes nothing"


def test_changed_input_makes_a_new_dataset_beside_the_old(tiny_run, run_cli):
    root, _, args = tiny_run
    old = _one(root / "datasets")
    old_manifest = (old / "manifest.json").read_text()
    out = run_cli("prepare", *args[1:], "--set", "data.eval_fraction=0.3").stdout
    assert "new dataset" in out
    assert len([p for p in (root / "datasets").iterdir()]) == 2
    assert (old / "manifest.json").read_text() == old_manifest


def test_models_list_and_show(tiny_run, run_cli):
    _, _, args = tiny_run
    storage = args[3]
    job = ("jobs/tiny.yaml", "--set", storage)
    listed = run_cli("models", "list", *job).stdout
    model_id = re.search(r"model-[0-9a-f]{12}", listed).group(0)
    card = json.loads(run_cli("models", "show", *job, model_id).stdout)
    assert card["model_id"] == model_id
    missing = run_cli("models", "show", *job, "model-nope", check=False)
    assert missing.returncode == 2 and "registered:" in missing.stderr


def test_generation_metrics_with_bertscore_on_ray(tiny_run, run_cli):
    """The same run scored as free text: ROUGE-L and BERTScore (MiniLM in a Ray Data actor);
    with promote off the verdict is recorded and production stays as it was."""
    root, _, args = tiny_run
    out = run_cli(
        "eval", *args[1:], "--set", "eval.task=generation", "--set", "eval.gate.promote=false"
    ).stdout
    assert "reused run" in out and "new evaluation" in out
    assert "incumbent (base model tiny)" in out, "the run in production is not its own incumbent"
    evals = [json.loads(p.read_text()) for p in (root / "evals").glob("*/manifest.json")]
    generation = next(e for e in evals if e["metrics"]["task"] == "generation")
    for arm in ("candidate", "incumbent"):
        assert 0.0 <= generation["metrics"][arm]["bertscore_f1"] <= 1.0
        assert 0.0 <= generation["metrics"][arm]["rouge_l"] <= 1.0
    assert generation["metrics"]["primary_metric"] == "rouge_l"
    new_id = re.search(r"model id: (model-[0-9a-f]{12}) \(stage: candidate\)", out)
    assert new_id, out
