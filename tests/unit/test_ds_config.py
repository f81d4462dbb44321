"""The DeepSpeed config comes from the spec; a user's config may add but not contradict."""

from __future__ import annotations

import pytest

from ftray.errors import UserError
from ftray.spec import TrainSpec
from ftray.train.ds_config import deepspeed_config


def _spec(**deepspeed) -> TrainSpec:
    return TrainSpec.model_validate(
        {
            "method": "full",
            "batch_size": 16,
            "micro_batch_size": 2,
            "max_grad_norm": 0.5,
            "scaling": {"num_workers": 2},
            "deepspeed": deepspeed,
        }
    )


def test_batch_numbers_agree_by_construction():
    config = deepspeed_config(_spec(stage=3, offload_params=True), "bfloat16")
    assert config["train_batch_size"] == 16
    assert config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 4  # 16 = 2 workers × 2 × 4
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_user_config_is_merged_and_auto_is_resolved():
    user = {
        "train_batch_size": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": {"reduce_bucket_size": 1000},
    }
    config = deepspeed_config(_spec(config=user), "float32")
    assert config["train_batch_size"] == 16
    assert config["bf16"]["enabled"] is False
    assert config["zero_optimization"]["reduce_bucket_size"] == 1000
    assert config["zero_optimization"]["stage"] == 2


def test_contradicting_user_config_lists_every_disagreement():
    user = {"train_batch_size": 32, "gradient_accumulation_steps": 1, "bf16": {"enabled": True}}
    with pytest.raises(UserError) as err:
        deepspeed_config(_spec(config=user), "float32")
    message = str(err.value)
    assert "train_batch_size: 32 (the spec makes it 16)" in message
    assert "gradient_accumulation_steps: 1 (the spec makes it 4)" in message
    assert "bf16.enabled" in message


def test_parameter_offload_needs_stage_3():
    with pytest.raises(ValueError, match="offload_params"):
        _spec(stage=2, offload_params=True)


def test_lora_under_zero3_gets_a_stage_3_config_with_buckets_sized_to_the_model():
    spec = TrainSpec.model_validate(
        {"method": "lora", "sharding": "zero3", "batch_size": 4, "scaling": {"num_workers": 2}}
    )
    assert spec.zero3 and spec.deepspeed.stage == 2, "the section's default stage is not used"
    zero = deepspeed_config(spec, "float32", hidden_size=64)["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["reduce_bucket_size"] == 64**2
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64**2)
    assert zero["stage3_param_persistence_threshold"] == 640
    assert zero["stage3_max_live_parameters"] == zero["stage3_max_reuse_distance"] == 32 * 64**2
    big = deepspeed_config(spec, "bfloat16", hidden_size=8192)["zero_optimization"]
    assert big["stage3_max_live_parameters"] == 10**9, "DeepSpeed's default for 70B-class"
    user = {"zero_optimization": {"reduce_bucket_size": 10**6}}
    spec = spec.model_copy(update={"deepspeed": spec.deepspeed.model_copy(update={"config": user})})
    assert deepspeed_config(spec, "float32", 64)["zero_optimization"]["reduce_bucket_size"] == 10**6


def test_only_zero3_builds_partitioned():
    from ftray.train.methods import partitioned_construction

    assert partitioned_construction(deepspeed_config(_spec(stage=2), "float32")) is None
    assert not TrainSpec.model_validate({"method": "lora", "batch_size": 4}).zero3
    assert _spec(stage=3).zero3
