"""`ftray train` with method dpo on the colors task: preference pairs through prepare, two
workers under DDP, a worker killed mid-run, and the held-out preference margin."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import torch
import yaml

from ftray.train.dpo import collate_pairs, sequence_logps
from tests.conftest import cli
from tests.integration.colors import query


def _pairs_job(folder: Path) -> Path:
    """Colors prompts with the right color chosen over 'green' (not an allowed answer:
    the contract binds the chosen answer only), plus lines prepare must quarantine: bad
    JSON, equal answers, a repeated pair; and one it must keep, a second pair for a prompt.

    Not the other color as the rejected answer: in the few steps a test can afford, the tiny
    model learns the majority color (red, two thirds), not to read the color from the prompt.
    """
    rng = random.Random(0)
    lines = []
    for i in range(240):
        prompt, color = query(rng, i)
        lines.append(json.dumps({"text": prompt, "good": color, "bad": "green"}))
    lines += [lines[0], '{"text": "broken', json.dumps({"text": "x", "good": "red", "bad": "red"})]
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
            "dpo": {"beta": 0.1},
            "max_steps": 8,
            "eval_every": 3,
            "batch_size": 8,
            "lr": 0.02,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "scaling": {"num_workers": 2},
        },
    }
    path = folder / "dpo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _margins(model, pairs: dict) -> torch.Tensor:
    """log p(chosen) - log p(rejected) of each pair's answer tokens."""
    batch = collate_pairs(pairs)
    with torch.no_grad():
        logps = sequence_logps(model(**batch, use_cache=False).logits, batch["labels"])
    half = len(pairs["input_ids"])
    return logps[:half] - logps[half:]


def test_dpo_prefers_the_chosen_answer_on_held_out_prompts_and_resumes(ray_address, tmp_path):
    job = _pairs_job(tmp_path)
    done = cli(ray_address, "train", str(job), env={"FTRAY_INJECT_FAULT": "4"})
    store = tmp_path / "store" / "tiny"
    (dataset,) = (store / "datasets").glob("ds-*")
    data = json.loads((dataset / "manifest.json").read_text())
    counts = data["counts"]
    assert counts["quarantine_by_rule"] == {"duplicate": 1, "malformed": 1, "same_answers": 1}
    assert counts["blank"] == 1 and counts["read"] == 245
    assert counts["train"] + counts["validation"] + counts["eval"] == 241
    (run,) = [p for p in (store / "runs").iterdir() if (p / "manifest.json").is_file()]
    manifest = json.loads((run / "manifest.json").read_text())
    assert (run / "fault-injected.txt").is_file(), "the fault fired"
    assert manifest["resumed_from"] == [3], done.stdout
    assert (manifest["method"], manifest["kind"]) == ("dpo", "adapter")
    assert [step for step, _ in manifest["preference_accuracy_history"]] == [3, 6, 8]
    assert manifest["selected_on"]["metric"] == "eval_loss"  # the validation DPO loss

    # on the eval split (never seen in training) the chosen answer now outscores the other
    from peft import PeftModel

    from ftray.models import load_model

    pairs = pq.read_table(dataset / "eval").to_pydict()
    base = load_model(data["model_dir"], "float32").eval()
    before = _margins(base, pairs)
    tuned = PeftModel.from_pretrained(base, manifest["weights_uri"]).eval()
    after = _margins(tuned, pairs)
    assert len(after) == counts["eval"] >= 30
    assert (after > 0).float().mean() >= 0.9, after
    assert after.mean() > before.mean() + 1, (before.mean(), after.mean())
