"""Warm starts without Ray: `train.init_from` resolved against a real registry on disk, each
bad parent refused with the field and the fix, the parent in the run's identity, and the
lineage chain a model card leads to."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftray import registry
from ftray.errors import UserError
from ftray.models import load_tokenizer, resolve_model
from ftray.spec import ModelSpec, TrainSpec
from ftray.store import Store
from ftray.train.context import LocalContext
from ftray.train.loop import train_loop
from ftray.train.ray_train import run_identity
from ftray.train.warm import parent_weights, pin_parent
from tests.unit.test_train_loop import _config, _dataset, _spec
from tests.unit.test_train_loop import process_group as process_group  # a fixture

TINY = ModelSpec(base="tiny")
LORA = {"r": 4, "dropout": 0.0}  # no dropout: a training step's loss equals an evaluation's
SHAPE = {"r": 8, "target_modules": "all-linear"}


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), "proj")


def _register(store, tmp_path, name, *, kind="adapter", base="tiny", parent=None, lora=SHAPE):
    weights = tmp_path / f"weights-{name}"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    return registry.register(
        store,
        run_id=f"run-{name}",
        weights_uri=str(weights),
        kind=kind,
        dataset_id="ds-1",
        eval_id=f"eval-{name}",
        metrics={},
        gate={"passed": True, "rules": []},
        spec_hash="0" * 64,
        base_model=base,
        system_prompt=None,
        parent=parent,
        lora=lora if kind == "adapter" else None,
    )["model_id"]


def _train(**fields) -> TrainSpec:
    return TrainSpec.model_validate({"lora": {"r": 8}, **fields})


def test_production_resolves_now_and_the_parent_is_part_of_the_run_id(store, tmp_path):
    first = _register(store, tmp_path, "a")
    second = _register(store, tmp_path, "b", parent=first)
    spec = _train(init_from="production")
    registry.promote(store, first, reason="test")
    pinned = pin_parent(spec, TINY, store)
    assert pinned.init_from == first
    assert parent_weights(pinned, store) == store.uri("models", first, "adapter")
    same = run_identity(pin_parent(spec, TINY, store), TINY, "ds-1")
    assert run_identity(pinned, TINY, "ds-1") == same, "the same parent: the run is reused"
    registry.promote(store, second, reason="test")
    newer = pin_parent(spec, TINY, store)
    assert newer.init_from == second
    assert run_identity(newer, TINY, "ds-1") != same, "a new production model: a new run"
    by_id = pin_parent(_train(init_from=second), TINY, store)
    assert run_identity(by_id, TINY, "ds-1") == run_identity(newer, TINY, "ds-1")
    cold = _train()
    assert pin_parent(cold, TINY, store) is cold and parent_weights(cold, store) is None
    assert run_identity(cold, TINY, "ds-1") not in (same, run_identity(newer, TINY, "ds-1"))
    assert registry.lineage(store, second) == [second, first, "tiny"]
    assert registry.lineage(store, first) == [first, "tiny"]


@pytest.mark.parametrize(
    ("parent", "train", "message"),
    [
        (None, {"init_from": "production"}, "train.init_from is 'production' but no model has"),
        (None, {"init_from": "model-0123456789ab"}, "train.init_from: no model 'model-01234"),
        ({"base": "other"}, {}, "was tuned from 'other', not model.base 'tiny'; set model.base"),
        ({}, {"method": "full"}, "is a LoRA adapter and train.method full trains every"),
        ({"kind": "model"}, {}, "is a fully fine-tuned model and train.method lora trains an"),
        ({"kind": "model"}, {"method": "dpo"}, "train.method dpo trains an adapter"),
        ({}, {"lora": {"r": 4}}, "adapter has r=8 and target_modules=all-linear, train.lora"),
        ({}, {"lora": {"r": 8, "target_modules": ["q_proj"]}}, "set train.lora.r: 8 and"),
    ],
)
def test_a_parent_that_cannot_seed_the_run_is_refused_with_the_fix(
    store, tmp_path, parent, train, message
):
    fields = dict(train)
    if parent is not None:
        fields["init_from"] = _register(store, tmp_path, "p", **parent)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        pin_parent(_train(**fields), TINY, store)


@pytest.mark.parametrize(
    ("parent", "train"),
    [
        ({}, {"method": "lora"}),
        ({}, {"method": "qlora"}),
        ({}, {"method": "dpo"}),  # preferences after SFT: the DPO adapter starts from it
        ({"kind": "model"}, {"method": "full"}),
    ],
)
def test_supported_pairings_resolve(store, tmp_path, parent, train):
    model_id = _register(store, tmp_path, "p", **parent)
    assert pin_parent(_train(**train, init_from=model_id), TINY, store).init_from == model_id


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return resolve_model(TINY, Store(str(tmp_path_factory.mktemp("s")), "t"))


@pytest.fixture(scope="module")
def parent(tiny_dir, tmp_path_factory):
    """A trained LoRA parent on a dataset whose one batch is the whole training set and the
    validation set: (dataset folder, adapter folder, its final validation loss)."""
    folder = tmp_path_factory.mktemp("parent")
    _dataset(folder / "ds", load_tokenizer(tiny_dir), 8)
    ctx = LocalContext(str(folder / "ds"), str(folder / "ckpt"))
    final = train_loop(_config(tiny_dir, _spec(lora=LORA, epochs=5)), ctx)
    return folder, Path(ctx.reports[-1]["checkpoint"]) / "adapter", final["eval_loss"]


def _first_loss(tiny_dir, folder, spec: TrainSpec, init_weights=None) -> float:
    """The loss of step 1, measured before its update."""
    checkpoints = folder / f"ckpt-{spec.method}-{spec.sharding}-{init_weights}"
    ctx = LocalContext(str(folder / "ds"), str(checkpoints))
    config = {**_config(tiny_dir, spec), "init_weights": init_weights}
    return train_loop(config, ctx)["loss_history"][0][1]


def test_a_warm_started_adapter_starts_from_the_parents_weights(tiny_dir, parent):
    """The first step's loss is the parent's validation loss if, and only if, the parent's
    adapter was loaded into the new one; a fresh adapter starts where the base model is."""
    folder, adapter, parent_loss = parent
    one_step = _spec(lora=LORA, max_steps=1)
    assert _first_loss(tiny_dir, folder, one_step) > parent_loss + 0.3, "cold"
    warm = _first_loss(tiny_dir, folder, one_step, str(adapter))
    assert warm == pytest.approx(parent_loss, rel=1e-4)
    # on the 4-bit base the same adapter lands near, not on, the parent's loss
    quantized = _spec(method="qlora", lora=LORA, max_steps=1)
    assert _first_loss(tiny_dir, folder, quantized) > parent_loss + 0.3, "cold"
    warm = _first_loss(tiny_dir, folder, quantized, str(adapter))
    assert warm == pytest.approx(parent_loss, abs=0.05)


def test_a_warm_started_full_fine_tune_starts_from_the_parent_model(
    tiny_dir, parent, process_group, monkeypatch
):
    """A full parent (here the LoRA parent merged into the base) seeds DeepSpeed."""
    from peft import PeftModel

    from ftray.models import load_model

    monkeypatch.setenv("LOCAL_RANK", "0")
    folder, adapter, parent_loss = parent
    merged = PeftModel.from_pretrained(load_model(tiny_dir, "float32"), adapter)
    merged.merge_and_unload().save_pretrained(folder / "merged")
    full = _spec(method="full", max_steps=1)
    warm = _first_loss(tiny_dir, folder, full, str(folder / "merged"))
    assert warm == pytest.approx(parent_loss, rel=1e-4)


def test_a_warm_started_adapter_under_zero3_starts_from_the_parents_weights(
    tiny_dir, parent, process_group, monkeypatch
):
    """LoRA under ZeRO-3 (a partitioned base) loads the parent's adapter as DDP LoRA does."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    folder, adapter, parent_loss = parent
    one_step = _spec(lora=LORA, max_steps=1, sharding="zero3")
    assert _first_loss(tiny_dir, folder, one_step) > parent_loss + 0.3, "cold"
    warm = _first_loss(tiny_dir, folder, one_step, str(adapter))
    assert warm == pytest.approx(parent_loss, rel=1e-3)
