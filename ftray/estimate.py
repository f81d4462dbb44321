"""Memory, time and cost estimates per training method, from the model's config alone.

Rules of thumb, stated so they can be checked:

- full fine-tune with AdamW in mixed precision keeps 16 bytes per parameter (bf16 weights
  and gradients, fp32 master weights and two moments); DeepSpeed ZeRO-3 shards all of it
  across the GPUs (ZeRO-2 shards gradients and optimizer state: 2 + 14/n bytes). In fp32
  (DeepSpeed on CPU) there is no separate master copy: 4 + 4 + 8 = 16/n bytes under ZeRO-3
  (`FP32_BYTES`; a unit test checks the parts against bench/results/memory.json).
- LoRA keeps the frozen weights in bf16 (2 bytes/param; 4 in fp32) and 16 bytes per adapter
  parameter; under `train.sharding: zero3` both are partitioned over the n GPUs (1/n each).
  QLoRA the same with 4-bit NF4 weights (≈ 0.55 bytes/param with double quantization), whole
  on every GPU.
- activations, with gradient checkpointing: about 2 bytes × hidden × tokens × layers × 2,
  plus the logits of the micro-batch (4 bytes × vocab × tokens).
- compute: 6 FLOPs per parameter per token for a full fine-tune, 4 for (Q)LoRA (no weight
  gradients), at 40% of the GPU's bf16 peak (QLoRA's dequantization costs ≈ 30% more).
- serving: 2 FLOPs per parameter per token (prompt and answer), at the same 40% of peak; a
  batched server's lower bound (one request at a time is slower: decoding is memory-bound).
- prices: the indicative on-demand USD per GPU-hour below, unless `assess.gpu_prices` sets one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# name: (memory GiB, dense bf16 TFLOP/s, on-demand USD per GPU-hour, indicative)
GPUS = {
    "T4-16GB": (16, 65, 0.53),
    "L4-24GB": (24, 121, 0.80),
    "A10G-24GB": (24, 125, 1.01),
    "A100-40GB": (40, 312, 3.67),
    "A100-80GB": (80, 312, 4.10),
    "H100-80GB": (80, 989, 6.98),
}
MFU = 0.4
# bytes per parameter of an fp32 AdamW fine-tune (no mixed-precision master copy)
FP32_BYTES = {"weights": 4, "gradients": 4, "moments": 8}
METHODS = ("full", "lora", "qlora")
HEADROOM = 0.9  # usable share of GPU memory (CUDA context, fragmentation)


@dataclass(frozen=True)
class ModelShape:
    params: int
    hidden: int
    layers: int
    vocab: int


@dataclass(frozen=True)
class Estimate:
    method: str
    memory_gib: float  # per GPU
    fits: bool
    hours: float
    cost_usd: float

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "memory_gib_per_gpu": round(self.memory_gib, 1),
            "fits": self.fits,
            "hours": significant(self.hours, 3),
            "cost_usd": significant(self.cost_usd),
        }


def gpu_price(gpu: str, prices: Mapping[Any, float] | None = None) -> float:
    """USD per GPU-hour: the user's price when given, else the indicative one."""
    return (prices or {}).get(gpu, GPUS[gpu][2])


def serving_cost(shape: ModelShape, tokens_per_request: float, gpu: str, price: float) -> float:
    """USD per million requests of `tokens_per_request` tokens (prompt + answer) each."""
    seconds = 1e6 * tokens_per_request * 2 * shape.params / (GPUS[gpu][1] * 1e12 * MFU)
    return seconds / 3600 * price


def significant(value: float, digits: int = 2) -> float:
    """`value` rounded to `digits` significant figures (a tiny cost stays visible)."""
    return float(f"{value:.{digits}g}")


def usd(value: float) -> str:
    """Dollars for people: cents above $1, else two significant figures ($0.0004), never
    a misleading $0.00 for a cost that is small but not zero."""
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${significant(value):.{max(2, 1 - math.floor(math.log10(abs(value))))}f}"


def model_shape(model_dir: str) -> ModelShape:
    """Parameter count and shape, from the config (of a model folder or hub id, or a
    config.json file), without loading any weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    return ModelShape(params, config.hidden_size, config.num_hidden_layers, config.vocab_size)


def lora_params(shape: ModelShape, r: int) -> int:
    """Adapter parameters for all-linear LoRA: ≈ r × (in + out) over 7 projections per layer."""
    return int(shape.layers * 7 * r * 2 * shape.hidden * 1.5)


def state_bytes(
    shape: ModelShape,
    method: str,
    num_gpus: int,
    *,
    lora_r: int = 16,
    zero_stage: int = 3,
    sharding: str = "none",
    fp32: bool = False,
) -> float:
    """Bytes per GPU of weights, gradients and optimizer state (no activations): mixed
    precision, or `fp32` throughout."""
    n = shape.params
    if method == "full":
        total = sum(FP32_BYTES.values()) if fp32 else 16
        if zero_stage == 3:
            return n * total / num_gpus
        weights = FP32_BYTES["weights"] if fp32 else 2
        return n * (weights + (total - weights) / num_gpus)
    frozen = {"lora": 4 if fp32 else 2, "qlora": 0.55}[method]
    states = n * frozen + lora_params(shape, lora_r) * 16
    return states / num_gpus if sharding == "zero3" and method == "lora" else states


def estimate(
    shape: ModelShape,
    method: str,
    *,
    tokens: int,
    micro_batch_tokens: int,
    gpu: str,
    num_gpus: int,
    lora_r: int = 16,
    zero_stage: int = 3,
    sharding: str = "none",
    prices: Mapping[Any, float] | None = None,
) -> Estimate:
    """Per-GPU memory and the wall time and cost of training on `tokens` tokens; `sharding`
    (`train.sharding`) applies to lora."""
    memory_gib, tflops, _ = GPUS[gpu]
    price = gpu_price(gpu, prices)
    n = shape.params
    states = state_bytes(
        shape, method, num_gpus, lora_r=lora_r, zero_stage=zero_stage, sharding=sharding
    )
    if method == "full":
        flops_per_token, slowdown = 6 * n, 1.0
    else:
        flops_per_token, slowdown = 4 * n, (1.0 if method == "lora" else 1.3)
    activations = 4 * shape.hidden * micro_batch_tokens * shape.layers
    logits = 4 * shape.vocab * micro_batch_tokens
    need = (states + activations + logits) / 2**30
    seconds = tokens * flops_per_token * slowdown / (num_gpus * tflops * 1e12 * MFU)
    hours = seconds / 3600
    return Estimate(method, need, need <= memory_gib * HEADROOM, hours, hours * num_gpus * price)


def recommend(estimates: list[Estimate]) -> str:
    """The cheapest method that fits; LoRA over QLoRA when both fit (better quality, faster)."""
    fitting = {e.method for e in estimates if e.fits}
    if not fitting:
        return "none fits: use more or larger GPUs (ZeRO-3 shards a full fine-tune across them)"
    return next(method for method in ("lora", "qlora", "full") if method in fitting)
