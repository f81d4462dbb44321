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


def test_packing_lays_examples_end_to_end_with_positions_restarting():
    batch = {
        "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
        "labels": [[-100, 2, 3], [4, 5], [6, 7, 8, 9]],
    }
    packed = collate(batch, pack_length=5)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]
    assert packed["labels"].tolist()[1][-1] == -100
    assert "attention_mask" not in packed


def test_packed_loss_equals_unpacked_loss(tiny_dir, tmp_path):
    """No attention crosses examples: packing changes the padding, not the loss."""
    import torch

    from ftray.models import load_model

    tokenizer = load_tokenizer(tiny_dir)
    examples = [
        tokenize_example(tokenizer, messages_for(prompt, "Answer."), answer)
        for prompt, answer in [("is 3 odd?", "yes"), ("hi", "hello there"), ("2+2?", "4")]
    ]
    batch = {key: [e[key] for e in examples] for key in ("input_ids", "labels")}
    model = load_model(tiny_dir, "float32").eval()
    with torch.no_grad():
        plain = model(**collate(batch), use_cache=False).loss
        packed_batch = collate(batch, pack_length=1000)
        assert packed_batch["input_ids"].shape[0] == 1, "all three fit one row"
        packed = model(**packed_batch, use_cache=False).loss
        # With a KV cache transformers skips the block mask: attention leaks across examples.
        leaky = model(**packed_batch, use_cache=True).loss
    assert packed.item() == pytest.approx(plain.item(), rel=1e-5)
    assert abs(leaky.item() - plain.item()) > 1e-4


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
