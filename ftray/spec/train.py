"""The train section: method, schedule, adapters, DeepSpeed, scaling, early stopping."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ftray.spec._base import SpecRuleError, _Section


class LoraSpec(_Section):
    """LoRA adapter settings (peft)."""

    r: int = Field(default=16, ge=1, description="Adapter rank.")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (alpha / r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear",
        description="Module names to adapt, or 'all-linear' for every linear layer but the head.",
    )


class QloraSpec(_Section):
    """How QLoRA quantizes the frozen base model (bitsandbytes)."""

    bits: Literal[4, 8] = Field(default=4, description="4-bit (NF4/FP4) or 8-bit (LLM.int8).")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(
        default=True, description="Quantize the 4-bit quantization constants too (saves memory)."
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Dtype of the matmuls on dequantized weights: 'auto' is bfloat16 on GPUs "
        "that support it, else float32.",
    )


class DeepSpeedSpec(_Section):
    """DeepSpeed ZeRO for `method: full`; the config is generated from the spec."""

    stage: Literal[2, 3] = Field(
        default=2,
        description="ZeRO stage: 2 shards optimizer state and gradients across workers; 3 "
        "also shards the parameters.",
    )
    offload_optimizer: bool = Field(
        default=False, description="Keep optimizer state in CPU memory (DeepSpeedCPUAdam)."
    )
    offload_params: bool = Field(
        default=False, description="Keep parameters in CPU memory between uses (stage 3 only)."
    )
    config: dict = Field(
        default_factory=dict,
        description="Your own DeepSpeed config, merged over the generated one. Batch sizes, "
        "gradient accumulation, clipping and precision come from the spec: here they must be "
        "'auto' or equal the spec's values.",
    )

    @model_validator(mode="after")
    def _offload_params_needs_stage3(self) -> DeepSpeedSpec:
        if self.offload_params and self.stage != 3:
            raise SpecRuleError(
                "offload_params",
                True,
                "parameter offload needs ZeRO stage 3",
                "set train.deepspeed.stage: 3 or offload_params: false",
            )
        return self


class DpoSpec(_Section):
    """Preference tuning (`method: dpo`): sigmoid DPO on `data.preference` pairs."""

    beta: float = Field(
        default=0.1,
        gt=0,
        description="How far the tuned model may move from the reference: the loss is "
        "-log σ(beta × (chosen log-ratio - rejected log-ratio)); smaller lets it drift further.",
    )
    adapter: Literal["lora", "qlora", "full"] = Field(
        default="lora",
        description="What trains: a LoRA adapter (train.lora) on the base model, or on the "
        "base quantized by bitsandbytes (train.qlora), against the same base with the adapter "
        "switched off as the reference (no second copy held); or 'full': every weight, under "
        "DeepSpeed ZeRO-2 (train.deepspeed), against a frozen copy of the initial model held "
        "beside it (two copies of the weights in memory).",
    )


class EarlyStoppingSpec(_Section):
    """Stop when validation loss stops improving."""

    patience: int | None = Field(
        default=3,
        ge=1,
        description="Stop after this many evaluations in a row without improvement; null "
        "never stops early.",
    )
    min_delta: float = Field(
        default=0.0,
        ge=0,
        description="Smallest drop in validation loss that counts as improvement.",
    )


class ScalingSpec(_Section):
    """How many Ray Train workers, and what each one gets."""

    num_workers: int = Field(default=2, ge=1, description="Data-parallel training workers.")
    use_gpu: bool = Field(default=False, description="Give each worker one GPU.")
    cpus_per_worker: float = Field(default=1, gt=0, description="CPUs reserved per worker.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK",
        description="How workers are placed on nodes: 'PACK' fills nodes first (fast "
        "collectives), 'SPREAD' spreads when it can, 'STRICT_SPREAD' one worker per node.",
    )


class TrainSpec(_Section):
    """The train stage (Ray Train)."""

    method: Literal["full", "lora", "qlora", "dpo"] = Field(
        default="lora",
        description="Fine-tuning method: 'full' trains every weight under DeepSpeed ZeRO; "
        "'lora' trains a peft LoRA adapter; 'qlora' trains a LoRA adapter on a base model "
        "quantized by bitsandbytes; 'dpo' tunes a LoRA or QLoRA adapter, or every weight, on "
        "preference pairs (data.preference; settings in train.dpo).",
    )
    init_from: str | None = Field(
        default=None,
        pattern=r"^(production|model-[0-9a-f]{12})$",
        description="Warm start: continue from a registered model instead of model.base's "
        "weights: 'production' (the production model when the run starts) or a model id. "
        "An adapter continues as an adapter (lora, qlora or dpo, with the same train.lora r "
        "and target_modules), a full model as a full model; the parent must be tuned from "
        "the same model.base. Unset: start from model.base.",
    )
    epochs: int = Field(default=2, ge=1, le=20, description="Passes over the training set.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(
        default=8, ge=1, description="Global batch size: examples per optimizer step."
    )
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Examples per worker per forward pass; gradients accumulate over "
        "batch_size / (num_workers × micro_batch_size) passes. Unset: batch_size / "
        "num_workers (no accumulation).",
    )
    lr: float = Field(default=2e-4, gt=0, lt=1, description="Peak learning rate.")
    warmup_ratio: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Share of steps spent warming up the learning rate linearly; then it "
        "follows a cosine down to 0.",
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward: less memory, ~30% slower."
    )
    log_every: int = Field(default=5, ge=1, description="Log training metrics every N steps.")
    eval_every: int | None = Field(
        default=None,
        ge=1,
        description="Measure validation loss and save a checkpoint every N steps; unset: at "
        "the end of each epoch.",
    )
    early_stopping: EarlyStoppingSpec = Field(
        default_factory=EarlyStoppingSpec, description="Early stopping on validation loss."
    )
    keep_checkpoints: int = Field(
        default=2,
        ge=1,
        description="Checkpoints kept: the best by validation loss (by the task metric in a "
        "sweep trial), and the latest, to resume from. The run's result is the best one.",
    )
    max_failures: int = Field(
        default=2,
        ge=-1,
        description="Restarts from the latest checkpoint after a worker dies; -1: no limit.",
    )
    seed: int = Field(default=0, description="Seed for weights init, dropout and data order.")
    packing: bool = Field(
        default=False,
        description="Pack examples end to end into rows of up to data.max_seq_len tokens, "
        "the rows chosen over each worker's whole epoch (first-fit decreasing) and dealt into "
        "the same number of steps (position ids restart per example; no attention across "
        "examples): same loss, far less padding when lengths vary widely.",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (lora, qlora).")
    qlora: QloraSpec = Field(default_factory=QloraSpec, description="Quantization (qlora).")
    dpo: DpoSpec = Field(default_factory=DpoSpec, description="Preference tuning (dpo).")
    sharding: Literal["none", "zero3"] = Field(
        default="none",
        description="How an adapter run (lora) spreads the model over its workers: 'none' "
        "keeps the whole base on every worker (DDP, gradients all-reduced); 'zero3' "
        "partitions the frozen base and the adapter across workers under DeepSpeed ZeRO-3, "
        "built partitioned, so no worker ever holds the whole base (weights per worker ≈ "
        "1/num_workers; train.deepspeed's offload and config apply). A full fine-tune shards "
        "through train.deepspeed.stage instead.",
    )
    deepspeed: DeepSpeedSpec = Field(
        default_factory=DeepSpeedSpec,
        description="DeepSpeed ZeRO (full; lora with sharding: zero3).",
    )
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Ray Train scaling.")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainSpec:
        workers = self.scaling.num_workers
        if self.batch_size % workers:
            raise SpecRuleError(
                "batch_size",
                self.batch_size,
                f"not a multiple of scaling.num_workers {workers}; every worker takes an "
                "equal share of a batch",
                f"set train.batch_size to a multiple of {workers}",
            )
        micro = self.micro_batch_size
        if micro and self.batch_size % (workers * micro):
            raise SpecRuleError(
                "micro_batch_size",
                micro,
                f"batch_size {self.batch_size} is not a multiple of num_workers × "
                f"micro_batch_size = {workers * micro}, so no whole number of accumulation "
                "steps makes a batch",
                f"pick a micro_batch_size that divides {self.batch_size // workers}",
            )
        return self

    @model_validator(mode="after")
    def _dpo_rules(self) -> TrainSpec:
        if self.method == "dpo" and self.packing:
            raise SpecRuleError(
                "packing",
                True,
                "method dpo scores each answer as a sequence of its own; packed rows mix them",
                "set train.packing: false",
            )
        if self.method == "dpo" and self.dpo.adapter == "full" and self.deepspeed.stage == 3:
            raise SpecRuleError(
                "deepspeed.stage",
                3,
                "DPO on a full fine-tune keeps a whole frozen reference model on every worker; "
                "ZeRO-3 would need it partitioned too, which ftray does not do",
                "set train.deepspeed.stage: 2, or train.dpo.adapter: lora",
            )
        return self

    @model_validator(mode="after")
    def _sharding_rules(self) -> TrainSpec:
        if self.sharding == "none":
            return self
        problem = None
        if self.method == "dpo":
            problem = (
                "dpo scores each pair against the base with the adapter switched off; ftray "
                "runs that only on a whole base",
                "set train.sharding: none",
            )
        elif self.base_method == "full":
            problem = (
                "a full fine-tune is sharded by DeepSpeed's ZeRO stage, not train.sharding",
                "set train.sharding: none and train.deepspeed.stage: 3",
            )
        elif self.base_method == "qlora":
            problem = (
                "ZeRO-3 partitions float weights; bitsandbytes' packed 4-bit weights and "
                "their quantization state are not partitioned with them",
                "set train.method: lora (the base partitioned instead of quantized), or "
                "train.sharding: none",
            )
        if problem:
            raise SpecRuleError("sharding", self.sharding, *problem)
        return self

    @property
    def zero3(self) -> bool:
        """Weights partitioned across workers (DeepSpeed ZeRO-3): every worker must take
        part in every forward pass, generation included."""
        return self.sharding == "zero3" or (
            self.base_method == "full" and self.deepspeed.stage == 3
        )

    @property
    def base_method(self) -> Literal["full", "lora", "qlora"]:
        """How weights train: the method itself, or dpo's adapter."""
        return self.dpo.adapter if self.method == "dpo" else self.method

    @property
    def per_worker_batch(self) -> int:
        return self.micro_batch_size or self.batch_size // self.scaling.num_workers

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.scaling.num_workers * self.per_worker_batch)
