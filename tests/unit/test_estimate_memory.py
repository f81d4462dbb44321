"""The estimator's memory formulas against what bench/memory.py measured on 2 gloo ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftray.estimate import FP32_BYTES, ModelShape, estimate, state_bytes

MEASURED = json.loads(
    (Path(__file__).resolve().parents[2] / "bench" / "results" / "memory.json").read_text()
)
MODEL = MEASURED["model"]
SHAPE = ModelShape(
    MODEL["parameters"], MODEL["hidden_size"], MODEL["num_hidden_layers"], MODEL["vocab_size"]
)
RANKS = 2
GIB = 2**30


def test_zero3_weights_per_rank_are_a_1_over_n_share():
    full = MEASURED["runs"]["full_zero3_partitioned"]
    share = FP32_BYTES["weights"] * SHAPE.params / RANKS / GIB
    assert full["parameter_gib_per_rank"] == pytest.approx(share, rel=0.01)


def test_zero3_state_after_initialize_is_weights_and_moments_within_20_percent():
    """deepspeed.initialize allocates the fp32 partitions and Adam's two moments (gradients
    come with the first step); the rest of the process (imports) is subtracted."""
    full = MEASURED["runs"]["full_zero3_partitioned"]
    held = full["construction_peak_private_gib"] - full["after_imports_gib"]
    parts = FP32_BYTES["weights"] + FP32_BYTES["moments"]
    assert held == pytest.approx(parts * SHAPE.params / RANKS / GIB, rel=0.2)
    assert state_bytes(SHAPE, "full", RANKS, fp32=True) == sum(FP32_BYTES.values()) * (
        SHAPE.params / RANKS
    )


def test_lora_under_zero3_holds_1_over_n_of_ddp():
    runs = MEASURED["runs"]
    measured = (
        runs["lora_zero3"]["parameter_gib_per_rank"] / runs["lora_ddp"]["parameter_gib_per_rank"]
    )
    sharded = state_bytes(SHAPE, "lora", RANKS, sharding="zero3", fp32=True)
    assert measured == pytest.approx(
        sharded / state_bytes(SHAPE, "lora", RANKS, fp32=True), rel=0.05
    )


def test_assess_estimate_divides_lora_by_the_gpus_under_zero3():
    common = {"tokens": 10**7, "micro_batch_tokens": 1, "gpu": "A100-80GB", "num_gpus": 8}
    whole = estimate(SHAPE, "lora", **common)
    sharded = estimate(SHAPE, "lora", sharding="zero3", **common)
    assert sharded.memory_gib == pytest.approx(whole.memory_gib / 8, rel=0.01)
    qlora = estimate(SHAPE, "qlora", sharding="zero3", **common)
    assert qlora.memory_gib == estimate(SHAPE, "qlora", **common).memory_gib, "never sharded"
