"""The per-worker training loop runs without Ray, on a prepared dataset folder."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftray.data.tokenize import IGNORE_INDEX, messages_for, tokenize_example
from ftray.models import load_tokenizer, resolve_model
from ftray.spec import ModelSpec, TrainSpec
from ftray.store import Store
from ftray.train.loop import LocalContext, collate, train_loop


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path_factory.mktemp("s")), "t"))


def _dataset(folder, tokenizer, n):
    rows = []
    for i in range(n):
        label = "yes" if i % 2 else "no"
        example = tokenize_example(tokenizer, messages_for(f"is {i} odd?", "Answer."), label)
        rows.append({"input_ids": example["input_ids"], "labels": example["labels"]})
    for split in ("train", "eval"):
        (folder / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / split / "part.parquet")


def test_completion_only_labels(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    example = tokenize_example(tokenizer, messages_for("hi", "sys"), "there")
    prompt_len = example["prompt_tokens"]
    assert example["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert example["labels"][prompt_len:] == example["input_ids"][prompt_len:]
    assert tokenizer.decode(example["input_ids"][prompt_len:]).startswith("there")


def test_collate_pads_right_and_masks():
    batch = collate({"input_ids": [[1, 2, 3], [4]], "labels": [[-100, 2, 3], [4]]})
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_train_loop_learns_and_checkpoints_an_adapter(tiny_dir, tmp_path):
    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 16)
    spec = TrainSpec(
        epochs=3, batch_size=8, lr=1e-2, warmup_ratio=0, log_every=1, scaling={"num_workers": 1}
    )
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    config = {
        "train": spec.model_dump(mode="json"),
        "model_dir": tiny_dir,
        "dtype": "float32",
        "steps_per_epoch": 2,
    }
    final = train_loop(config, ctx)
    assert final["step"] == 6 and final["epoch"] == 3
    history = final["loss_history"]
    assert history[-1][1] < history[0][1], history
    assert len(ctx.reports) == 3, "one report per epoch"
    checkpoint = ctx.reports[-1]["checkpoint"]
    from pathlib import Path

    assert (Path(checkpoint) / "adapter_model.safetensors").is_file()
    assert ctx.reports[-1]["eval_loss"] < ctx.reports[0]["eval_loss"] + 1.0
