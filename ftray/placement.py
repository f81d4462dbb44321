"""Where an inference model goes: one decision from an actor's resources to device and dtype,
and the base model's serving configuration that evaluation copies.

Serve replicas, evaluation/assess generation actors and the embedding actors all call `place`
with the GPUs Ray reserved for them (`serve.gpus_per_replica`, `eval.gpus_per_worker`,
`monitor.embedding_gpus`): none keeps the model on CPU in float32 (the embedded default),
one or a fraction puts it on that GPU, several shard it across them (`device_map="auto"`).

`serving_config` is what the gate approves along with the weights: the quantization of the
base model (bitsandbytes settings) and the dtype. Evaluation loads the base exactly so, the
model card records it, and `ftray serve` warns when it serves with another one.

Runs without Ray (a GPU box with only torch and transformers calls it too).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

from ftray.errors import UserError
from ftray.spec import JobSpec, QloraSpec
from ftray.spec.model import CHAT_TEMPLATE_NAMES

# Generation batches per device when the spec leaves them unset: decoding on a GPU is bound by
# memory bandwidth, so a larger batch costs little more per step; on a CPU time grows with it.
CPU_BATCH, GPU_BATCH = 16, 64
CPU_SERVE_BATCH, GPU_SERVE_BATCH = 8, 32


@dataclass(frozen=True)
class Placement:
    """A model's device, dtype and attention kernel, as `from_pretrained` arguments."""

    device: str  # "cpu" or "cuda"
    dtype: str  # a torch dtype name: float32, bfloat16, float16
    device_map: Any  # None (load on CPU), {"": "cuda:0"} or "auto" (several GPUs)
    attention: str

    def load_kwargs(self) -> dict:
        """Keyword arguments for `AutoModelForCausalLM.from_pretrained`."""
        import torch

        kwargs: dict = {"dtype": getattr(torch, self.dtype), "attn_implementation": self.attention}
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        return kwargs


def place(
    gpus: float,
    dtype: str = "auto",
    attention: str = "sdpa",
    *,
    cuda: bool | None = None,
    bf16: bool | None = None,
) -> Placement:
    """The placement of a model in an actor holding `gpus` GPUs.

    Args:
        gpus: GPUs Ray reserved for the actor (0: CPU; a fraction shares one GPU).
        dtype: `model.dtype`; 'auto' is bfloat16 on a GPU that has it, else float32.
        attention: `model.attention`.
        cuda, bf16: what the machine offers; probed with torch when None (tests pass them).

    Raises:
        UserError: GPUs reserved but CUDA missing, or flash-attention where it cannot run.
    """
    if gpus > 0:
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if not cuda:
            raise UserError(
                f"{gpus:g} GPU(s) reserved for this model, but torch sees no CUDA device here: "
                "install a CUDA build of torch on the GPU nodes, or reserve 0 GPUs "
                "(serve.gpus_per_replica, eval.gpus_per_worker, monitor.embedding_gpus)."
            )
        if bf16 is None:
            import torch

            bf16 = torch.cuda.is_bf16_supported()
        device = "cuda"
        device_map: Any = "auto" if gpus >= 2 else {"": "cuda:0"}
    else:
        device, device_map, bf16 = "cpu", None, False
    if dtype == "auto":
        dtype = "bfloat16" if bf16 else "float32"
    if attention == "flash_attention_2":
        _check_flash_attention(device)
    return Placement(device, dtype, device_map, attention)


def generation_batch_size(setting: int | None, gpus: float, *, serving: bool = False) -> int:
    """The spec's batch size, or the device's default when it is unset."""
    if setting is not None:
        return setting
    if serving:
        return GPU_SERVE_BATCH if gpus > 0 else CPU_SERVE_BATCH
    return GPU_BATCH if gpus > 0 else CPU_BATCH


def served_quantization(spec: JobSpec) -> QloraSpec | None:
    """The bitsandbytes settings the served base loads with (None: unquantized).

    `serve.quantization: auto` serves a QLoRA job's adapters on the quantized base they were
    trained on (the job's `train.qlora`), other jobs unquantized; 'int4'/'int8' quantize the
    base, with the job's own QLoRA settings when it trained with the same bits.
    """
    choice = spec.serve.quantization
    qlora = spec.train.qlora if spec.train.base_method == "qlora" else None
    if choice == "auto":
        return qlora
    if choice == "none":
        return None
    bits: Literal[4, 8] = 8 if choice == "int8" else 4
    return qlora if qlora is not None and qlora.bits == bits else QloraSpec(bits=bits)


def serving_config(spec: JobSpec) -> dict:
    """What the gate approves besides the weights: the base's quantization, the dtype and the
    chat template prompts are rendered with (None: the tokenizer's own)."""
    quantization = served_quantization(spec)
    return {
        "quantization": "none" if quantization is None else f"int{quantization.bits}",
        "bitsandbytes": None if quantization is None else quantization.model_dump(mode="json"),
        "dtype": spec.model.dtype,
        "chat_template": spec.model.chat_template,
    }


def describe(config: dict) -> str:
    """A serving configuration in a few words, for messages."""
    bnb = config.get("bitsandbytes") or {}
    # in the spec's order: a stored card's keys come back sorted
    detail = ", ".join(f"{k} {bnb[k]}" for k in QloraSpec.model_fields if k in bnb and k != "bits")
    quantization = config["quantization"] + (f" ({detail})" if detail else "")
    words = f"quantization {quantization}, dtype {config['dtype']}"
    if "chat_template" in config:  # cards from before it was recorded have none
        template = config["chat_template"]
        if template is None:
            template = "the tokenizer's own"
        elif template not in CHAT_TEMPLATE_NAMES:
            template = "a Jinja string"
        words += f", chat template {template}"
    return words


def serving_mismatch(model_id: str, card: dict, serving: dict) -> str | None:
    """A warning when `serving` is not the configuration the gate approved `model_id` with
    (its model card's `serving`; cards from before it was recorded say nothing)."""
    approved = card.get("serving")
    if not approved or all(serving.get(key) == value for key, value in approved.items()):
        return None
    shown = {key: serving[key] for key in approved}  # compare like with like in the message
    return (
        f"warning: serving {model_id} with {describe(shown)}, but its gate approved it "
        f"with {describe(approved)}: its evaluation judged a different model; set serve."
        "quantization, model.dtype and model.chat_template as evaluated, or evaluate it "
        "again with these settings"
    )


def _check_flash_attention(device: str) -> None:
    if device != "cuda":
        raise UserError(
            "model.attention is 'flash_attention_2', which runs only on a CUDA GPU, and this "
            "model loads on CPU: reserve a GPU for it, or set model.attention: sdpa."
        )
    if importlib.util.find_spec("flash_attn") is None:
        raise UserError(
            "model.attention is 'flash_attention_2' but the flash-attn package is not "
            "installed where the model loads: `pip install flash-attn` on the GPU nodes, or "
            "set model.attention: sdpa."
        )
