"""The DeepSpeed config for `method: full` (and LoRA under `train.sharding: zero3`), derived
from the spec so its numbers always agree.

Other launchers leave batch sizes to two places (the launcher's arguments and the DeepSpeed
JSON) and fail with "mismatch… set to auto". Here the spec is the one source: the generated
config states train_batch_size = micro batch × workers × accumulation, clipping and precision;
a user's own `deepspeed.config` is merged over it, and any of those keys it sets must be
'auto' or equal the spec's value.
"""

from __future__ import annotations

from ftray.errors import UserError
from ftray.spec import TrainSpec

# Keys the spec owns: the user's config may only say 'auto' or repeat the spec's value.
_OWNED = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
)


def deepspeed_config(spec: TrainSpec, dtype: str, hidden_size: int | None = None) -> dict:
    """DeepSpeed config for `spec` (method full, or an adapter under ZeRO-3) with weights
    computed in `dtype`.

    `dtype` is resolved ('bfloat16', 'float16' or 'float32'), not 'auto'. `hidden_size`, the
    model's, sizes the communication buckets as transformers' Trainer does for 'auto':
    DeepSpeed's defaults (5e8 elements, 2 GB in fp32) outweigh a model under a billion
    parameters, and they are host memory when the device is the CPU.
    """
    ds = spec.deepspeed
    stage = 3 if spec.zero3 else ds.stage
    zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if hidden_size:
        zero["reduce_bucket_size"] = hidden_size**2
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
        if hidden_size:
            zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size**2)
            zero["stage3_param_persistence_threshold"] = 10 * hidden_size
            # DeepSpeed keeps up to 1e9 gathered parameters live between forward and
            # backward: a whole model under a billion parameters on every rank. A few
            # layers' worth instead (unchanged from ~8192 hidden up: 70B-class models).
            live = min(10**9, 32 * hidden_size**2)
            zero["stage3_max_live_parameters"] = zero["stage3_max_reuse_distance"] = live
    config: dict = {
        "train_batch_size": spec.batch_size,
        "train_micro_batch_size_per_gpu": spec.per_worker_batch,
        "gradient_accumulation_steps": spec.accumulation,
        "gradient_clipping": spec.max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 10**9,  # ftray logs; DeepSpeed's own step log stays quiet
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:  # offloaded state needs DeepSpeed's own CPU Adam
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": spec.lr, "weight_decay": spec.weight_decay},
        }
    return _merge_user(config, ds.config, dtype)


def _merge_user(config: dict, user: dict, dtype: str) -> dict:
    problems = []
    for key in _OWNED:
        if key in user and user[key] not in ("auto", config[key]):
            problems.append(f"{key}: {user[key]!r} (the spec makes it {config[key]!r})")
    for section, name in (("bf16", "bfloat16"), ("fp16", "float16")):
        enabled = user.get(section, {}).get("enabled", "auto")
        if enabled not in ("auto", dtype == name):
            problems.append(
                f"{section}.enabled: {enabled!r} (model.dtype resolves to {dtype}; set "
                f"model.dtype instead)"
            )
    if "optimizer" in user and "optimizer" not in config:
        problems.append("optimizer: ftray builds AdamW from train.lr and train.weight_decay")
    if "scheduler" in user:
        problems.append("scheduler: ftray schedules the learning rate (train.warmup_ratio)")
    if problems:
        raise UserError(
            "train.deepspeed.config disagrees with the spec:\n  "
            + "\n  ".join(problems)
            + "\nRemove these keys or set them to 'auto'; change the spec's train.* fields "
            "instead."
        )
    merged = _deep_merge(config, {k: v for k, v in user.items() if v != "auto"})
    for key in _OWNED:
        merged[key] = config[key]
    for section in ("bf16", "fp16"):
        merged[section]["enabled"] = config[section]["enabled"]
    return merged


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def precision_of(dtype) -> str:
    """'bfloat16', 'float16' or 'float32' for a torch dtype."""
    name = str(dtype).removeprefix("torch.")
    return name if name in ("bfloat16", "float16") else "float32"
