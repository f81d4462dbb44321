"""`ftray train` on the session's local Ray: each method, a worker killed mid-run, a resumed
job, and the W&B offline run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli


def _run_manifest(store: Path) -> dict:
    runs = [p for p in (store / "tiny" / "runs").iterdir() if (p / "manifest.json").is_file()]
    assert len(runs) == 1, runs
    return json.loads((runs[0] / "manifest.json").read_text())


def _killed_at_step_3(ray_address, store: Path):
    args = ["train", "jobs/tiny.yaml", "--set", f"storage={store}", "--set", "train.eval_every=2"]
    return args, cli(ray_address, *args, env={"FTRAY_INJECT_FAULT": "3"})


def test_killed_worker_resumes_from_the_last_checkpoint(ray_address, tiny_store):
    """Rank 1 dies after step 3; Ray Train restarts both workers from step 2's checkpoint."""
    _, done = _killed_at_step_3(ray_address, tiny_store)
    manifest = _run_manifest(tiny_store)
    run_dir = tiny_store / "tiny" / "runs" / manifest["run_id"]
    assert (run_dir / "fault-injected.txt").is_file(), "the fault fired"
    assert manifest["resumed_from"] == [2]
    assert manifest["metrics"]["step"] == 6
    assert [step for step, _ in manifest["eval_history"]] == [2, 4, 6]
    assert "resumed from step(s) [2]" in done.stdout
    # the best checkpoint by eval loss is the run's result
    best = min(manifest["eval_history"], key=lambda row: row[1])
    assert manifest["metrics"]["best_step"] == best[0]
    state = json.loads((Path(manifest["best_checkpoint"]) / "trainer_state.json").read_text())
    assert state["step"] == best[0]
    assert (Path(manifest["weights_uri"]) / "adapter_model.safetensors").is_file()

    # the W&B offline run holds the training and eval metrics
    assert manifest["wandb"]["mode"] == "offline"
    runs = list((run_dir / "wandb").glob(f"offline-run-*-{manifest['run_id']}"))
    assert runs, list(run_dir.glob("wandb/*"))
    records = b"".join(f.read_bytes() for r in runs for f in r.glob("*.wandb"))
    for key in (b"train/loss", b"train/tokens_per_s", b"train/lr", b"validation/loss"):
        assert key in records, key


# Slow tier (`make test-slow`): its parts are in `make test` elsewhere: the killed and resumed
# DDP run above, ZeRO-3 checkpoints consolidated and warm-started in tests/unit.
@pytest.mark.slow
def test_lora_under_zero3_killed_and_resumed_matches_ddp(ray_address, tiny_store):
    """LoRA on a ZeRO-3 partitioned base (`train.sharding: zero3`), killed and resumed as the
    DDP run was, follows its losses and leaves a plain peft adapter that loads onto the base."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from ftray.models import load_model

    store = tiny_store
    args, _ = _killed_at_step_3(ray_address, store)
    ddp = _run_manifest(store)
    args = [*args, "--set", "train.sharding=zero3", "--set", "wandb.mode=disabled"]
    cli(ray_address, *args, env={"FTRAY_INJECT_FAULT": "3"})
    (zero3,) = [
        run
        for path in (store / "tiny" / "runs").glob("*/manifest.json")
        if (run := json.loads(path.read_text()))["spec"]["sharding"] == "zero3"
    ]
    assert zero3["resumed_from"] == [2]
    assert (Path(zero3["best_checkpoint"]) / "deepspeed").is_dir()
    for key in ("loss_history", "eval_history"):
        assert [s for s, _ in zero3[key]] == [s for s, _ in ddp[key]]
        for (_, got), (_, want) in zip(zero3[key], ddp[key], strict=True):
            assert abs(got - want) <= 1e-3 * abs(want), (key, zero3[key], ddp[key])

    adapter = load_file(Path(zero3["weights_uri"], "adapter_model.safetensors"))
    trained = [w for name, w in adapter.items() if "lora_B" in name]  # 0 before training
    assert trained and all(w.abs().max() > 0 for w in trained), "gathered, not placeholders"
    config = json.loads((store / "tiny" / "runs" / ddp["run_id"] / "config.json").read_text())
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    logits = []
    for run in (ddp, zero3):
        model = PeftModel.from_pretrained(load_model(config["model_dir"]), run["weights_uri"])
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.allclose(logits[0], logits[1], atol=1e-3), (logits[0] - logits[1]).abs().max()


def test_resubmitted_job_resumes_its_run(ray_address, tiny_store):
    """A QLoRA job that fails (no restarts allowed) continues when submitted again."""
    args = ["train", "jobs/tiny.yaml", "--set", f"storage={tiny_store}"]
    args += ["--set", "train.method=qlora", "--set", "train.eval_every=2"]
    args += ["--set", "train.max_failures=0", "--set", "wandb.mode=disabled"]
    failed = cli(ray_address, *args, check=False, env={"FTRAY_INJECT_FAULT": "3"})
    assert failed.returncode != 0, failed.stdout
    assert not list((tiny_store / "tiny" / "runs").glob("*/manifest.json"))
    # the test split plays no part in training: made unreadable, the run still ends
    (dataset,) = (tiny_store / "tiny" / "datasets").glob("ds-*")
    for part in (dataset / "eval").glob("*.parquet"):
        part.write_bytes(b"the test set")

    done = cli(ray_address, *args)
    manifest = _run_manifest(tiny_store)
    assert manifest["method"] == "qlora"
    validation = json.loads((dataset / "manifest.json").read_text())["counts"]["validation"]
    assert manifest["selected_on"] == {
        "split": "validation",
        "metric": "eval_loss",
        "examples": validation,
    }
    assert manifest["resumed_from"] == [2], done.stdout
    assert manifest["metrics"]["step"] == 6


# Slow tier: its parts are in `make test`: full fine-tunes under ZeRO-2/3 consolidated and
# resumed in tests/unit (test_train_loop, test_dpo), Ray Train on 2 workers in the tests above.
@pytest.mark.slow
def test_full_finetune_with_zero2_on_two_workers(ray_address, tiny_store):
    """DeepSpeed ZeRO-2 over 2 gloo workers; the consolidated model is evaluated."""
    args = ["eval", "jobs/tiny.yaml", "--set", f"storage={tiny_store}"]
    args += ["--set", "train.method=full", "--set", "train.deepspeed.stage=2"]
    args += ["--set", "train.micro_batch_size=1", "--set", "wandb.mode=disabled"]
    # no consistency sampling (a second generation pass): test_pipeline's evaluation has it
    args += ["--set", "eval.metrics=[exact_match,classification,hallucination]"]
    done = cli(ray_address, *args)
    manifest = _run_manifest(tiny_store)
    assert manifest["kind"] == "model"
    history = manifest["loss_history"]
    assert history[-1][1] < history[0][1], history
    model_dir = Path(manifest["weights_uri"])
    assert (model_dir / "model.safetensors").is_file()
    config = json.loads((Path(manifest["best_checkpoint"]) / "deepspeed_config.json").read_text())
    assert config["train_batch_size"] == 4
    assert config["gradient_accumulation_steps"] == 2, "4 = 2 workers × 1 × 2"
    assert "macro_f1 on 8 held-out examples: incumbent (base model tiny)" in done.stdout
