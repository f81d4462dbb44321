"""The per-worker training loop runs without Ray, on a prepared dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ftray.data.tokenize import IGNORE_INDEX, messages_for, tokenize_example
from ftray.models import load_tokenizer, resolve_model
from ftray.spec import ModelSpec, TrainSpec
from ftray.store import Store
from ftray.train.collate import collate
from ftray.train.context import LocalContext
from ftray.train.loop import train_loop


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path_factory.mktemp("s")), "t"))


def _dataset(folder, tokenizer, n):
    rows = []
    for i in range(n):
        label = "yes" if i % 2 else "no"
        example = tokenize_example(tokenizer, messages_for(f"is {i} odd?", "Answer."), label)
        rows.append({"input_ids": example["input_ids"], "labels": example["labels"]})
    for split in ("train", "validation"):
        (folder / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / split / "part.parquet")


def test_completion_only_labels(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    example = tokenize_example(tokenizer, messages_for("hi", "sys"), "there")
    prompt_len = example["labels"].count(IGNORE_INDEX)
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
    packed = collate(batch, pack_length=5)  # first-fit decreasing: the 4 first, then 3 + 2
    assert packed["input_ids"].tolist() == [[6, 7, 8, 9, 0], [1, 2, 3, 4, 5]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert packed["labels"].tolist()[0][-1] == -100
    assert "attention_mask" not in packed


def test_packed_loss_equals_unpacked_loss(tiny_dir, tmp_path):
    """No attention crosses examples: packing changes the padding, not the loss."""
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
        # rows decided elsewhere (`pack_epoch`, over a shard): the same loss
        rows = collate({**batch, "rows": [[2], [0, 1]]}, pack_length=1000)
        dealt = model(**rows, use_cache=False).loss
    assert packed.item() == pytest.approx(plain.item(), rel=1e-5)
    assert dealt.item() == pytest.approx(plain.item(), rel=1e-5)
    assert abs(leaky.item() - plain.item()) > 1e-4


def _config(tiny_dir, spec: TrainSpec, steps_per_epoch: int = 2) -> dict:
    return {
        "train": spec.model_dump(mode="json"),
        "model_dir": tiny_dir,
        "dtype": "float32",
        "steps_per_epoch": steps_per_epoch,
        "total_steps": min(spec.max_steps or 10**9, steps_per_epoch * spec.epochs),
    }


def _spec(**overrides) -> TrainSpec:
    settings = {
        "epochs": 3,
        "batch_size": 8,
        "lr": 1e-2,
        "warmup_ratio": 0,
        "log_every": 1,
        "scaling": {"num_workers": 1},
    }
    return TrainSpec.model_validate({**settings, **overrides})


def test_train_loop_learns_and_checkpoints_an_adapter(tiny_dir, tmp_path):
    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 16)
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    final = train_loop(_config(tiny_dir, _spec()), ctx)
    assert final["step"] == 6 and final["epoch"] == 3
    history = final["loss_history"]
    assert history[-1][1] < history[0][1], history
    assert len(ctx.reports) == 3, "one eval + checkpoint per epoch"
    checkpoint = Path(ctx.reports[-1]["checkpoint"])
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    assert (checkpoint / "optimizer.pt").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 6
    assert final["best_eval_loss"] == min(loss for _, loss in final["eval_history"])


def test_gradient_accumulation_matches_the_full_batch(tiny_dir, tmp_path):
    """4 micro-batches of 2 accumulate the gradient of one batch of 8 (token-weighted)."""
    from ftray.train.loop import _items
    from ftray.train.methods import AdapterEngine

    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 16)
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    raw = next(ctx.batches("train", 8, 0))
    grads = []
    for micro in (8, 2):
        torch.manual_seed(0)
        spec = _spec(micro_batch_size=micro if micro < 8 else None, lora={"dropout": 0.0})
        engine = AdapterEngine(spec, tiny_dir, "float32", ctx, total_steps=1)
        seen = []
        engine.optimizer.step = lambda seen=seen, e=engine: seen.extend(
            p.grad.clone() for p in e.params
        )
        parts = [collate({k: v[i : i + micro] for k, v in raw.items()}) for i in range(0, 8, micro)]
        num_items = sum(_items(part, spec) for part in parts)
        for i, part in enumerate(parts):
            engine.micro_step(part, i == len(parts) - 1, num_items, 1)
        grads.append(seen)
    assert len(grads[0]) == len(grads[1]) > 0
    for whole, accumulated in zip(*grads, strict=True):
        assert torch.allclose(whole, accumulated, atol=1e-7, rtol=1e-4)


class _Crash(Exception):
    pass


class _CrashingContext(LocalContext):
    """Dies (raises) right after its `crash_after`-th checkpoint, like a killed worker."""

    def __init__(self, *args, crash_after: int):
        super().__init__(*args)
        self.crash_after = crash_after

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if len(self.reports) == self.crash_after:
            raise _Crash


def test_resume_is_exact(tiny_dir, tmp_path):
    """Killed after step 2's checkpoint and resumed: the same weights as never stopping."""
    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 24)
    # dropout on, 3 micro-batches per step: RNG and data position must both resume right
    spec = _spec(epochs=2, eval_every=2, micro_batch_size=4, lora={"dropout": 0.1})
    config = _config(tiny_dir, spec, steps_per_epoch=3)
    whole = LocalContext(str(tmp_path / "ds"), str(tmp_path / "whole"))
    expected = train_loop(config, whole)

    broken = _CrashingContext(str(tmp_path / "ds"), str(tmp_path / "broken"), crash_after=1)
    with pytest.raises(_Crash):
        train_loop(config, broken)
    resumed = LocalContext(str(tmp_path / "ds"), str(tmp_path / "broken"))
    final = train_loop(config, resumed)

    assert final["resumed_from"] == [2]
    assert final["step"] == expected["step"] == 6
    assert final["loss_history"] == expected["loss_history"]
    assert final["eval_history"] == expected["eval_history"]
    got, want = _adapter(resumed.checkpoints()[-1]), _adapter(whole.checkpoints()[-1])
    for key, value in want.items():
        assert torch.equal(value, got[key]), key


def test_packed_resume_sees_the_same_remaining_batches(tiny_dir, tmp_path):
    """Packed across the shard: killed mid-epoch 2 and resumed, the same weights as never
    stopping (the epoch's rows are dealt again identically and the consumed ones skipped)."""
    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 16)
    spec = _spec(epochs=2, eval_every=3, micro_batch_size=4, packing=True, lora={"dropout": 0.1})
    config = {**_config(tiny_dir, spec, steps_per_epoch=2), "pack_length": 128}
    whole = LocalContext(str(tmp_path / "ds"), str(tmp_path / "whole"))
    expected = train_loop(config, whole)

    broken = _CrashingContext(str(tmp_path / "ds"), str(tmp_path / "broken"), crash_after=1)
    with pytest.raises(_Crash):
        train_loop(config, broken)
    resumed = LocalContext(str(tmp_path / "ds"), str(tmp_path / "broken"))
    final = train_loop(config, resumed)

    assert final["resumed_from"] == [3], "after the first step of epoch 2: mid-epoch"
    assert final["loss_history"] == expected["loss_history"]
    got, want = _adapter(resumed.checkpoints()[-1]), _adapter(whole.checkpoints()[-1])
    for key, value in want.items():
        assert torch.equal(value, got[key]), key


def test_early_stopping_fires_on_a_plateau(tiny_dir, tmp_path):
    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 16)
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    spec = _spec(epochs=5, lr=1e-9, eval_every=1, early_stopping={"patience": 2, "min_delta": 0.01})
    final = train_loop(_config(tiny_dir, spec), ctx)
    assert final["stopped_early"] is True
    assert final["step"] == 3, "best at step 1, then two evaluations without improvement"
    assert final["best_step"] == 1


def test_qlora_adapter_loads_onto_the_4bit_base(tiny_dir, tmp_path):
    from peft import PeftModel

    from ftray.models import load_quantized_model
    from ftray.spec import QloraSpec

    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 16)
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    final = train_loop(_config(tiny_dir, _spec(method="qlora", lora={"r": 4})), ctx)
    history = final["loss_history"]
    assert history[-1][1] < history[0][1], history

    base = load_quantized_model(tiny_dir, QloraSpec())
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    adapter = Path(ctx.reports[-1]["checkpoint"]) / "adapter"
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    batch = collate(next(ctx.batches("validation", 8, 0)))
    with torch.no_grad():
        loss = model(**batch, use_cache=False).loss.item()
    assert loss == pytest.approx(final["eval_loss"], rel=1e-3)


def _adapter(checkpoint) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(checkpoint) / "adapter" / "adapter_model.safetensors"))


@pytest.fixture
def process_group():
    """A one-process gloo group, as torchrun or Ray Train would set up (DeepSpeed needs one)."""
    import torch.distributed as dist

    from tests.conftest import free_port

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()
    from deepspeed.utils import groups

    groups._WORLD_GROUP = None  # DeepSpeed's copy of the destroyed group: the next test's is new


@pytest.mark.parametrize("stage, offload", [(3, True)])
def test_full_zero3_checkpoint_consolidates_to_a_plain_hf_model(
    tiny_dir, tmp_path, process_group, stage, offload, monkeypatch
):
    """ZeRO-3 with CPU offload trains; its sharded checkpoint becomes one safetensors model
    that plain transformers loads and that scores the run's own eval loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftray.train.loop import evaluate_loss
    from ftray.train.methods import consolidate

    monkeypatch.setenv("LOCAL_RANK", "0")
    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 16)
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    spec = _spec(
        method="full",
        lr=1e-3,
        micro_batch_size=4,
        deepspeed={"stage": stage, "offload_optimizer": offload, "offload_params": offload},
    )
    final = train_loop(_config(tiny_dir, spec), ctx)
    history = final["loss_history"]
    assert history[-1][1] < history[0][1], history
    checkpoint = ctx.reports[-1]["checkpoint"]
    assert (Path(checkpoint) / "deepspeed" / "state").is_dir()

    consolidate(checkpoint, tiny_dir, str(tmp_path / "model"), chat_template="zephyr")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    # self-contained: the folder's tokenizer renders with the job's template
    from ftray.chat_templates import ZEPHYR_TEMPLATE

    assert AutoTokenizer.from_pretrained(tmp_path / "model").chat_template == ZEPHYR_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert evaluate_loss(model, ctx, 8) == pytest.approx(final["eval_loss"], rel=1e-4)


def _probe_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        messages = messages_for(f"is {i} odd?", "Answer.")
        rows.append({"prompt": f"is {i} odd?", "messages": json.dumps(messages), "completion": "?"})
    return rows


def _generation_task(primary: str = "exact_match") -> dict:
    return {
        "name": "generation",
        "groups": ["exact_match", "rouge_l"],
        "primary": primary,
        "labels": None,
        "schema": None,
        "threshold": 0.5,
    }


def test_task_probe_scores_answers_as_the_evaluation_does(tiny_dir):
    """Half the sample's references are the model's own greedy answers: exact match 0.5."""
    from ftray.data.tokenize import render_prompt
    from ftray.models import generate_texts, load_model
    from ftray.train.config import ProbeConfig
    from ftray.train.probe import task_score

    tokenizer, model = load_tokenizer(tiny_dir), load_model(tiny_dir, "float32")
    rows = _probe_rows(6)
    prompts = [render_prompt(tokenizer, json.loads(r["messages"])) for r in rows]
    answers = [a["text"] for a in generate_texts(model, tokenizer, prompts, 4)]
    for row, answer in zip(rows[:3], answers[:3], strict=True):
        row["completion"] = answer
    for row in rows[3:]:
        row["completion"] = "an answer the random model never gives"
    probe = ProbeConfig(task=_generation_task(), examples=rows, max_new_tokens=4, batch_size=4)
    assert task_score(model, tokenizer, probe, rank=0, world=1, synced=False) == 0.5


def test_validation_decides_and_the_test_split_is_never_read(tiny_dir, tmp_path):
    """Loss, early stopping, the probe and checkpoint scores use the validation split; the
    eval (test) split is not even opened: here it is not a readable file at all."""
    from ftray.train.config import ProbeConfig

    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 16)
    (tmp_path / "ds" / "eval").mkdir()
    (tmp_path / "ds" / "eval" / "part.parquet").write_bytes(b"the test set: not for training")
    probe = ProbeConfig(task=_generation_task("rouge_l"), examples=_probe_rows(3), max_new_tokens=4)
    config = {**_config(tiny_dir, _spec(epochs=2)), "probe": probe.model_dump(mode="json")}
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    final = train_loop(config, ctx)
    assert set(ctx.tables) == {"train", "validation"}
    assert [step for step, _ in final["task_history"]] == [2, 4]
    assert all(0 <= score <= 1 for _, score in final["task_history"])
    assert [r["task_metric"] for r in ctx.reports] == [s for _, s in final["task_history"]]
    best = max(final["task_history"], key=lambda row: row[1])
    assert (final["best_task_step"], final["best_task_metric"]) == tuple(best)
    scores = [r["selection_score"] for r in ctx.reports]
    losses = [r["eval_loss"] for r in ctx.reports]
    tasks = [r["task_metric"] for r in ctx.reports]
    assert sorted(range(2), key=lambda i: -scores[i]) == sorted(
        range(2), key=lambda i: (-tasks[i], losses[i])
    ), "checkpoints rank on the task metric, ties to the lower loss"


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_the_training_model_runs_the_spec_attention_kernel(tiny_dir, tmp_path, method):
    """model.attention reaches the model the loop trains (build_engine, as the loop calls it)."""
    from ftray.train.methods import build_engine

    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    for attention in ("eager", "sdpa"):
        engine = build_engine(_spec(method=method), tiny_dir, "float32", ctx, 1, None, attention)
        assert engine.module.config._attn_implementation == attention


def test_a_small_validation_split_is_read_once_per_worker_and_a_large_one_every_time():
    from types import SimpleNamespace

    from ftray.spec import TrainSpec
    from ftray.train.ray_train import _VALIDATION_CACHE_BYTES, _RayContext, _validation_bytes

    reads = []

    def read(split, batch_size, epoch):
        reads.append(split)
        yield {"input_ids": [[1, 2]], "labels": [[1, 2]]}

    for cache, want in ((True, ["validation"]), (False, ["validation"] * 3)):
        reads.clear()
        ctx = object.__new__(_RayContext)
        ctx._cache_validation, ctx._validation, ctx._read = cache, {}, read
        passes = [list(ctx.batches("validation", 4, 0)) for _ in range(3)]
        assert passes[0] == passes[1] == passes[2] == [{"input_ids": [[1, 2]], "labels": [[1, 2]]}]
        list(ctx.batches("train", 4, 0)), list(ctx.batches("train", 4, 1))  # never cached
        assert reads == [*want, "train", "train"]

    def dataset(rows):
        return SimpleNamespace(
            manifest={"counts": {"validation": rows}, "spec": {"max_seq_len": 2048}}
        )

    lora = TrainSpec()
    assert _validation_bytes(dataset(1_000), lora) <= _VALIDATION_CACHE_BYTES  # 33 MB
    assert _validation_bytes(dataset(100_000), lora) > _VALIDATION_CACHE_BYTES  # 3.3 GB


def test_the_probe_asks_a_retrieval_dataset_with_each_rows_chunks(tmp_path):
    import json
    from dataclasses import asdict

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ftray.artifacts import DatasetRef
    from ftray.rag.context import Chunk, with_context
    from ftray.train.ray_train import _probe

    chunk = Chunk(id="0123456789abcdef", source="fees.md", text="A card costs 4.50.", score=1.0)
    question = [{"role": "user", "content": "What does a card cost?"}]
    row = {
        "prompt": "What does a card cost?",
        "messages": json.dumps(question),
        "completion": "4.50",
    }
    (tmp_path / "validation").mkdir()
    context = json.dumps([asdict(chunk)])
    pq.write_table(
        pa.Table.from_pylist([{**row, "context": context}]), tmp_path / "validation" / "p.parquet"
    )
    settings = {"sample": 4, "task": _generation_task(), "max_new_tokens": 4}
    for retrieval, messages in ((None, question), ({"k": 1}, with_context(question, [chunk]))):
        manifest = {"retrieval": retrieval} if retrieval else {}
        (example,) = _probe(settings, DatasetRef("ds", str(tmp_path), manifest, False)).examples
        assert json.loads(example["messages"]) == messages and "context" not in example
