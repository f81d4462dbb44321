"""The go/no-go rule and the memory/cost estimates behind it."""

from __future__ import annotations

import pytest

from ftray.assess import DONT, FINE_TUNE, TOO_LITTLE, decide
from ftray.estimate import ModelShape, estimate, model_shape, recommend
from ftray.models import resolve_model
from ftray.spec import ModelSpec
from ftray.specload import validate_spec
from ftray.store import Store

SPEC = validate_spec(
    {"project": "p", "model": {"base": "tiny"}, "data": {"sources": [{"path": "x.csv"}]}}, []
)
SEVEN_B = ModelShape(params=7_240_000_000, hidden=4096, layers=32, vocab=32000)


@pytest.mark.parametrize(
    ("usable", "score", "verdict"),
    [
        (10, None, TOO_LITTLE),
        (10, 0.99, TOO_LITTLE),
        (500, 0.95, DONT),
        (500, 0.9, DONT),
        (500, 0.3, FINE_TUNE),
        (60, 0.1, FINE_TUNE),
    ],
)
def test_decision(usable, score, verdict):
    baseline = None if score is None else {"exact_match": score}
    assert decide(usable, baseline, SPEC) == verdict


def test_estimates_order_methods_by_memory_and_fit_the_gpu():
    common = {"tokens": 10_000_000, "micro_batch_tokens": 8192, "num_gpus": 1}
    on_a10 = {m: estimate(SEVEN_B, m, gpu="A10G-24GB", **common) for m in ("full", "lora", "qlora")}
    assert on_a10["full"].memory_gib > on_a10["lora"].memory_gib > on_a10["qlora"].memory_gib
    assert not on_a10["full"].fits and on_a10["lora"].fits and on_a10["qlora"].fits
    assert 100 < on_a10["full"].memory_gib < 130, "16 bytes per parameter"
    assert recommend(list(on_a10.values())) == "lora"
    sharded = estimate(SEVEN_B, "full", gpu="A100-80GB", **{**common, "num_gpus": 8})
    assert sharded.fits, "ZeRO-3 over 8 GPUs fits a 7B full fine-tune"
    assert sharded.hours < on_a10["full"].hours


def test_nothing_fits_says_so():
    huge = ModelShape(params=400_000_000_000, hidden=16384, layers=126, vocab=128256)
    found = [
        estimate(huge, m, tokens=1, micro_batch_tokens=1, gpu="T4-16GB", num_gpus=1)
        for m in ("full", "lora", "qlora")
    ]
    assert recommend(found).startswith("none fits")


def test_model_shape_reads_the_config_without_weights(tmp_path):
    shape = model_shape(resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path), "t")))
    assert shape.layers == 2 and shape.hidden == 64
    assert 10_000 < shape.params < 1_000_000
