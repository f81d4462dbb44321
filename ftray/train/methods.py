"""The three methods behind one interface, so `train_loop` has a single copy of the loop.

- `AdapterEngine` (lora, qlora, dpo on an adapter): a peft LoRA adapter on a plain or
  bitsandbytes-quantized base, data-parallel through the worker context (DDP under Ray Train),
  torch AdamW, gradient accumulation without all-reduce on the non-final micro-steps; for dpo
  its loss is `ftray.train.dpo`'s on pair batches, against the same base with the adapter
  disabled.
- `DeepSpeedEngine` (full, dpo on every weight; lora under `train.sharding: zero3`): every
  weight (or only the adapter's, on a frozen base) trained under DeepSpeed ZeRO-2/3, optional
  CPU offload, config from `ftray.train.ds_config`; for dpo against a frozen copy of the
  initial model (ZeRO-2 only). Under ZeRO-3 the model is built partitioned: no rank ever holds
  the whole of it. A full run's sharded checkpoints are consolidated into one safetensors model
  by `consolidate`; an adapter run also writes the whole adapter, gathered, as `adapter/`.

Both run without Ray: give them any `WorkerContext`.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from ftray.chat_templates import use_chat_template
from ftray.models import add_lora, load_model, load_quantized_model, torch_dtype
from ftray.spec import TrainSpec
from ftray.train.dpo import adapter_off, frozen_reference, step_loss
from ftray.train.ds_config import deepspeed_config, precision_of

DS_TAG = "state"  # DeepSpeed's checkpoint tag inside each checkpoint's deepspeed/ folder


def build_engine(
    spec: TrainSpec,
    model_dir: str,
    dtype: str,
    ctx,
    total_steps: int,
    parent: str | None = None,
    attention: str = "sdpa",
):
    """The engine for `spec.method` on this worker; `parent`: a local folder with the
    weights it starts from (a warm start's adapter or full model), else the base's;
    `attention`: model.attention, the kernel the trained model runs."""
    options = {"attention": attention}
    if spec.base_method == "full":
        return DeepSpeedEngine(spec, parent or model_dir, dtype, ctx, total_steps, **options)
    if spec.sharding == "zero3":
        return DeepSpeedEngine(
            spec, model_dir, dtype, ctx, total_steps, adapter_parent=parent, **options
        )
    return AdapterEngine(spec, model_dir, dtype, ctx, total_steps, parent, **options)


class AdapterEngine:
    """LoRA or QLoRA: only the adapter trains; checkpoints hold the adapter + optimizer."""

    def __init__(
        self,
        spec: TrainSpec,
        model_dir: str,
        dtype: str,
        ctx,
        total_steps: int,
        parent: str | None = None,
        attention: str = "sdpa",
    ):
        import torch

        if spec.base_method == "qlora":
            from peft import prepare_model_for_kbit_training

            base = load_quantized_model(model_dir, spec.qlora, ctx.device, attention=attention)
            base = prepare_model_for_kbit_training(
                base,
                use_gradient_checkpointing=spec.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        else:
            base = load_model(model_dir, dtype, attention=attention)
            if spec.gradient_checkpointing:
                base.gradient_checkpointing_enable({"use_reentrant": False})
                base.enable_input_require_grads()
        self.module = add_lora(base, spec.lora)
        if parent:  # the spec's LoRA settings, the parent's weights (same shape: warm.py)
            _load_adapter(self.module, parent)
        self.model = ctx.wrap_model(self.module, move=spec.base_method != "qlora")
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=spec.lr, weight_decay=spec.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(total_steps, spec.warmup_ratio)
        )
        self.max_grad_norm = spec.max_grad_norm
        self.beta = spec.dpo.beta if spec.method == "dpo" else None  # None: the SFT loss
        self.reference = adapter_off(self.module) if self.beta is not None else None
        # frozen base: no weight grads; dpo adds the reference's forward pass
        self.flops_per_token = (6 if self.beta is not None else 4) * count_params(self.module)

    def micro_step(self, batch: dict, boundary: bool, num_items, world_size: int):
        """Forward and backward one micro-batch; step the optimizer on the boundary.

        The loss is this micro-batch's summed token loss over `num_items`, the label tokens
        of the whole step on all workers, times `world_size` (DDP averages over workers): the
        step's gradient is that of the mean token loss of the global batch, however it is
        split into micro-batches. Returns the unscaled part (summed over micro-batches and
        workers: the global mean). For dpo, a pair batch (`ftray.train.dpo`) whose items
        are its pairs: the mean DPO loss of the global batch.
        """
        import torch

        sync = contextlib.nullcontext()
        if not boundary and hasattr(self.model, "no_sync"):
            sync = self.model.no_sync()  # all-reduce once per step, not per micro-batch
        with sync:
            if self.beta is None:
                loss = self.model(**batch, use_cache=False, num_items_in_batch=num_items).loss
            else:
                loss = step_loss(self.model, self.reference, batch, self.beta, num_items)
            (loss * world_size).backward()
        if boundary:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def close(self) -> None:
        """Nothing outlives the loop."""

    def save(self, folder: str, rank: int) -> bool:
        """Write this rank's part of a checkpoint; True if it wrote anything (rank 0 only)."""
        import torch

        if rank != 0:
            return False
        self.module.save_pretrained(Path(folder, "adapter"))
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        torch.save(state, Path(folder, "optimizer.pt"))
        return True

    def load(self, folder: str) -> None:
        import torch

        _load_adapter(self.module, Path(folder, "adapter"))
        # weights_only: a checkpoint must not run code on load (tensors and plain state only)
        state = torch.load(Path(folder, "optimizer.pt"), weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DeepSpeedEngine:
    """Full fine-tune, or a LoRA adapter on a frozen base, under DeepSpeed ZeRO; every rank
    saves its shard of each checkpoint.

    `adapter_parent`: with `spec.method` lora, a warm start's adapter folder (None: a fresh
    adapter); the spec refuses qlora and dpo here.
    """

    def __init__(
        self,
        spec: TrainSpec,
        model_dir: str,
        dtype: str,
        ctx,
        total_steps: int,
        adapter_parent: str | None = None,
        attention: str = "sdpa",
    ):
        import deepspeed
        import torch
        from transformers import AutoConfig

        precision = precision_of(torch_dtype(dtype))
        hidden = getattr(AutoConfig.from_pretrained(model_dir), "hidden_size", None)
        config = deepspeed_config(spec, precision, hidden)
        self.adapter = spec.base_method != "full"
        # Under ZeRO-3 transformers builds and loads the model inside `deepspeed.zero.Init`
        # while this object lives (it holds only a weak reference to it), so every weight is
        # partitioned as it is created: no rank holds the whole model. It stays alive with
        # the engine: peft and generation ask it too.
        self._partitioned = partitioned_construction(config)
        # fp32: DeepSpeed casts to bf16/fp16 itself
        model = load_model(model_dir, "float32", attention=attention)
        if spec.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
            if self.adapter:
                model.enable_input_require_grads()
        if self.adapter:
            # built outside zero.Init: whole (small) tensors, partitioned by initialize below
            model = add_lora(model, spec.lora)
            if adapter_parent:
                _load_adapter(model, adapter_parent)
        self.module = model
        params = count_params(model)
        # frozen base: no weight gradients
        flops = (4 if self.adapter else 6) * params
        groups = _decay_groups(model, spec.weight_decay)
        optimizer = None if "optimizer" in config else torch.optim.AdamW(groups, lr=spec.lr)
        schedule = lr_schedule(total_steps, spec.warmup_ratio)
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            model_parameters=groups if optimizer is None else None,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=config,
            dist_init_required=False,
        )
        self.config = config
        self.beta = spec.dpo.beta if spec.method == "dpo" else None  # None: the SFT loss
        self.reference = None
        # ZeRO-2 (the spec refuses 3): every worker holds whole weights, so a whole reference
        if self.beta is not None:
            self.reference = frozen_reference(model_dir, precision, ctx.device)
            flops += 2 * params  # dpo adds the reference's forward pass
        self.flops_per_token = flops

    def micro_step(self, batch: dict, boundary: bool, num_items, world_size: int):
        """As `AdapterEngine.micro_step`; DeepSpeed counts micro-steps itself and steps on its
        accumulation boundary (its own 1/accumulation scaling is off: `num_items` does it)."""
        if self.beta is None:
            loss = self.model(**batch, use_cache=False, num_items_in_batch=num_items).loss
        else:
            loss = step_loss(self.model, self.reference, batch, self.beta, num_items)
        self.model.backward(loss * world_size, scale_wrt_gas=False)
        if boundary != self.model.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeed's accumulation boundary disagrees with the loop's")
        self.model.step()
        return loss.detach()

    @property
    def lr(self) -> float:
        return self.model.get_lr()[0]

    def close(self) -> None:
        """Leave partitioned construction: while transformers holds its `HfDeepSpeedConfig`,
        every later `from_pretrained` in this process (evaluation, a next run) would build
        inside `zero.Init` too."""
        if self._partitioned is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            self._partitioned = None

    def save(self, folder: str, rank: int) -> bool:
        # an adapter run's frozen base comes from model.base again on resume: not saved
        self.model.save_checkpoint(
            str(Path(folder, "deepspeed")), tag=DS_TAG, exclude_frozen_parameters=self.adapter
        )
        if self.adapter:
            self._save_adapter(Path(folder, "adapter"), rank)
        if rank == 0:
            Path(folder, "deepspeed_config.json").write_text(json.dumps(self.config, indent=1))
        return True

    def _save_adapter(self, folder: Path, rank: int) -> None:
        """The whole adapter as peft writes it (it loads onto the base as a DDP run's does),
        gathered from its partitions on every rank, written by rank 0."""
        import deepspeed

        trained = [p for p in self.module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trained):
            if rank == 0:
                self.module.save_pretrained(folder)

    def load(self, folder: str) -> None:
        path, _ = self.model.load_checkpoint(
            str(Path(folder, "deepspeed")), tag=DS_TAG, load_module_strict=not self.adapter
        )
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint in {folder}")


def consolidate(
    checkpoint_dir: str, base_model_dir: str, out_dir: str, chat_template: str | None = None
) -> None:
    """One safetensors HF model from a full run's sharded ZeRO checkpoint, on CPU, with the
    base's tokenizer carrying `chat_template` (model.chat_template; None: its own), so the
    folder is self-contained.

    Later stages load the result with plain transformers, no DeepSpeed.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    state = get_fp32_state_dict_from_zero_checkpoint(
        str(Path(checkpoint_dir, "deepspeed")), tag=DS_TAG
    )
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_model_dir))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied - {"lm_head.weight"}:
        raise RuntimeError(f"checkpoint does not match the model: {missing=} {unexpected=}")
    model.tie_weights()
    model.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    use_chat_template(tokenizer, chat_template, base_model_dir).save_pretrained(out_dir)


def _load_adapter(module, folder) -> None:
    """Load the adapter `save_pretrained` wrote in `folder` into `module`'s adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder, "adapter_model.safetensors")))
    loaded: Any = set_peft_model_state_dict(module, weights)  # torch's _IncompatibleKeys
    if loaded.unexpected_keys:
        raise RuntimeError(f"adapter in {folder} does not fit: {loaded.unexpected_keys[:3]}")


def lr_schedule(total: float, warmup_ratio: float):
    """Linear warm-up to the peak learning rate, then a cosine down to 0 at `total` steps."""
    warmup = max(1, int(total * warmup_ratio)) if warmup_ratio else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def count_params(model) -> int:
    """The model's parameters, trainable or not (whole sizes of ZeRO-3 partitioned ones)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def partitioned_construction(config: dict):
    """Under ZeRO-3, transformers' `HfDeepSpeedConfig` for `config`: while it is alive,
    `from_pretrained` builds the model inside `deepspeed.zero.Init` and loads each weight
    straight into its partitions. None for ZeRO-2 (whole weights on every rank anyway)."""
    if config["zero_optimization"]["stage"] != 3:
        return None
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    # over the process group Ray Train (or torchrun) set up, as `deepspeed.initialize` does:
    # the config checks its batch size against the world size
    deepspeed.init_distributed(dist_init_required=False)
    _return_freed_blocks()
    return HfDeepSpeedConfig(config)


def _return_freed_blocks() -> None:
    """Fix glibc's mmap threshold at its 128 KiB default.

    zero.Init allocates each weight whole and frees it once partitioned (loading gathers and
    frees each layer again). glibc raises its threshold to the size of each large block freed
    and keeps later blocks of that size in its heap, so the process goes on holding about the
    whole model it freed: 1.37 GiB against 0.79 GiB for a 340M-parameter model on 2 ranks
    (bench/memory.py). A fixed threshold hands such blocks back to the system.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): another allocator
        return
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def _decay_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices, not biases or norm weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
