"""Warm starts without Ray: `train.init_from` resolved against a real registry on disk, each
bad parent refused with the field and the fix, the parent in the run's identity, and the
lineage chain a model card leads to."""

from __future__ import annotations

import pytest

from ftray import registry
from ftray.errors import UserError
from ftray.spec import ModelSpec, TrainSpec
from ftray.store import Store
from ftray.train.ray_train import run_identity
from ftray.train.warm import parent_weights, pin_parent

TINY = ModelSpec(base="tiny")
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
