"""`ftray train` with method dpo on the colors task: preference pairs (some weighted) through
prepare, two workers (a LoRA adapter under DDP, or every weight under DeepSpeed ZeRO-2), a
worker killed mid-run, and the held-out preference margin."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ftray.train.dpo import collate_pairs, sequence_logps
from tests.conftest import cli
from tests.integration.colors import query


def _pairs_job(folder: Path, train: dict) -> Path:
    """Colors prompts with the right color chosen over 'green' (not an allowed answer:
    the contract binds the chosen answer only), every fifth of weight 0.5, plus lines prepare
    must quarantine: bad JSON, equal answers, a repeated pair, a weight that is no number;
    and one it must keep, a second pair for a prompt.

    Not the other color as the rejected answer: in the few steps a test can afford, the tiny
    model learns the majority color (red, two thirds), not to read the color from the prompt.
    """
    rng = random.Random(0)
    lines = []
    for i in range(240):
        prompt, color = query(rng, i)
        weight = {"weight": 0.5} if i % 5 == 0 else {}
        lines.append(json.dumps({"text": prompt, "good": color, "bad": "green", **weight}))
    lines += [lines[0], '{"text": "broken', json.dumps({"text": "x", "good": "red", "bad": "red"})]
    lines.append(json.dumps({"text": "y", "good": "red", "bad": "green", "weight": "lots"}))
    # a second pair for a prompt, another answer chosen: kept (pairs have no conflict rule)
    first = json.loads(lines[0])
    other = "blue" if first["good"] == "red" else "red"
    lines.append(json.dumps({"text": first["text"], "good": other, "bad": "green"}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n\n")
    spec = {
        "project": "tiny",
        "storage": str(folder / "store"),
        "model": {"base": "tiny"},
        "data": {
            "sources": [{"path": str(folder / "pairs.jsonl")}],
            "prompt_field": "text",
            "preference": {"chosen_field": "good", "rejected_field": "bad"},
            "labels": ["red", "blue"],
            "eval_fraction": 0.15,
            "dedup": {"near": False},
        },
        "assess": {"enabled": False},
        "wandb": {"mode": "disabled"},
        "train": {
            "method": "dpo",
            "max_steps": 8,
            "eval_every": 3,
            "batch_size": 8,
            "scaling": {"num_workers": 2},
            **train,
        },
    }
    path = folder / "dpo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _weights(dataset: Path, split: str) -> list[float]:
    return pq.read_table(dataset / split, columns=["weight"]).column("weight").to_pylist()


def _margins(model, pairs: dict) -> torch.Tensor:
    """log p(chosen) - log p(rejected) of each pair's answer tokens."""
    batch = collate_pairs(pairs)
    with torch.no_grad():
        logps = sequence_logps(model(**batch, use_cache=False).logits, batch["labels"])
    half = len(pairs["input_ids"])
    return logps[:half] - logps[half:]


LORA = {"dpo": {"beta": 0.1}, "lr": 0.02, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
FULL = {"dpo": {"beta": 0.1, "adapter": "full"}, "lr": 1e-3, "deepspeed": {"stage": 2}}


# [full] is in the slow tier (`make test-slow`): its parts are in `make test` elsewhere: DPO on
# 2 Ray workers with a worker killed and resumed ([lora]), ZeRO-2 on 2 Ray workers
# (test_train.py's full fine-tune), and a resumed full DPO engine keeping the initial model as
# its reference (tests/unit/test_dpo.py); the combination took ~2.5 minutes of `make test`.
@pytest.mark.parametrize(
    "train",
    [pytest.param(LORA, id="lora"), pytest.param(FULL, id="full", marks=pytest.mark.slow)],
)
def test_dpo_prefers_the_chosen_answer_on_held_out_prompts_and_resumes(
    ray_address, tmp_path, train
):
    """The full fine-tune's reference is a frozen copy of the initial model: resumed at step
    3, the run goes on against it (a reference reloaded from the checkpoint would restart
    every margin at 0, and 8 steps would not reach the held-out margins below)."""
    job = _pairs_job(tmp_path, train)
    done = cli(ray_address, "train", str(job), env={"FTRAY_INJECT_FAULT": "4"})
    store = tmp_path / "store" / "tiny"
    (dataset,) = (store / "datasets").glob("ds-*")
    data = json.loads((dataset / "manifest.json").read_text())
    counts = data["counts"]
    assert counts["quarantine_by_rule"] == {
        "duplicate": 1,
        "malformed": 1,
        "same_answers": 1,
        "wrong_type": 1,
    }
    assert counts["blank"] == 1 and counts["read"] == 246
    assert counts["train"] + counts["validation"] + counts["eval"] == 241
    weights = [w for split in ("train", "validation", "eval") for w in _weights(dataset, split)]
    assert sorted(set(weights)) == [0.5, 1.0] and weights.count(0.5) == 48
    (run,) = [p for p in (store / "runs").iterdir() if (p / "manifest.json").is_file()]
    manifest = json.loads((run / "manifest.json").read_text())
    assert (run / "fault-injected.txt").is_file(), "the fault fired"
    assert manifest["resumed_from"] == [3], done.stdout
    full = train is FULL
    assert (manifest["method"], manifest["kind"]) == ("dpo", "model" if full else "adapter")
    assert [step for step, _ in manifest["preference_accuracy_history"]] == [3, 6, 8]
    assert manifest["selected_on"]["metric"] == "eval_loss"  # the validation DPO loss

    # on the eval split (never seen in training) the chosen answer now outscores the other
    from peft import PeftModel

    from ftray.models import load_model

    pairs = pq.read_table(dataset / "eval").to_pydict()
    base = load_model(data["model_dir"], "float32").eval()
    before = _margins(base, pairs)
    if full:
        tuned = load_model(manifest["weights_uri"], "float32").eval()
    else:
        tuned = PeftModel.from_pretrained(base, manifest["weights_uri"]).eval()
    after = _margins(tuned, pairs)
    assert len(after) == counts["eval"] >= 30
    assert (after > 0).float().mean() >= 0.9, after
    assert after.mean() > before.mean() + 1, (before.mean(), after.mean())
