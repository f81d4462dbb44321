"""The typed job spec: one pydantic model per stage, composed into `JobSpec`.

Each section lives in a module of its own (model, data, train, assess, evaluate, serve,
monitor, wandb, sweep, cluster); this one composes them into `JobSpec` with the rules that
span sections. Every default is written once, beside its field's description; `ftray schema`
and the README's spec reference are generated from these models. Loading, overrides and
error messages live in `ftray.specload`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from ftray.spec._base import SpecRuleError, _Section
from ftray.spec.assess import AssessSpec
from ftray.spec.cluster import RaySpec
from ftray.spec.data import (
    DataSpec,
    DedupSpec,
    PiiSpec,
    RetrievalDataSpec,
    SourceSpec,
    ToxicitySpec,
)
from ftray.spec.evaluate import (
    LOWER_IS_BETTER,
    METRIC_GROUPS,
    PRIMARY_METRIC,
    TASK_METRICS,
    EvalSpec,
    GateSpec,
)
from ftray.spec.index import IndexSpec
from ftray.spec.model import ModelSpec
from ftray.spec.monitor import MonitorSpec
from ftray.spec.serve import AutoscalingSpec, ServeSpec
from ftray.spec.sweep import SweepParam, SweepSpec
from ftray.spec.train import (
    DeepSpeedSpec,
    EarlyStoppingSpec,
    LoraSpec,
    QloraSpec,
    ScalingSpec,
    TrainSpec,
)
from ftray.spec.wandb import WandbSpec


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
    index: IndexSpec | None = Field(
        default=None, description="Retrieval corpus that `ftray index` indexes; unset: none."
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
    def _pairs_for_dpo(self) -> JobSpec:
        dpo, pairs = self.train.method == "dpo", self.data.preference is not None
        if dpo != pairs:
            where, value = ("train.method", "dpo") if dpo else ("data.preference", "set")
            raise SpecRuleError(
                where,
                value,
                "method dpo trains on preference pairs (data.preference), and pairs train "
                "only with method dpo",
                "set both data.preference and train.method: dpo, or neither",
            )
        return self

    @model_validator(mode="after")
    def _flash_attention_on_gpus(self) -> JobSpec:
        if self.model.attention != "flash_attention_2":
            return self
        reserved = {
            "train.scaling.use_gpu": self.train.scaling.use_gpu,
            "serve.gpus_per_replica": self.serve.gpus_per_replica,
            "eval.gpus_per_worker": self.eval.gpus_per_worker,
        }
        on_cpu = [name for name, gpus in reserved.items() if not gpus]
        if on_cpu:
            raise SpecRuleError(
                "model.attention",
                self.model.attention,
                f"runs only on a CUDA GPU, and {' and '.join(on_cpu)} "
                f"{'is' if len(on_cpu) == 1 else 'are'} 0 or false (those models load on CPU)",
                "reserve GPUs there, or use model.attention: sdpa",
            )
        return self

    @model_validator(mode="after")
    def _vllm_serves_unquantized(self) -> JobSpec:
        # serve.quantization int4/int8 with vllm is refused by ServeSpec itself; 'auto' needs
        # the train section to know it means bitsandbytes.
        if (
            self.serve.engine == "vllm"
            and self.serve.quantization == "auto"
            and self.train.base_method == "qlora"
        ):
            raise SpecRuleError(
                "serve.engine",
                self.serve.engine,
                "a QLoRA job's base is served quantized by bitsandbytes (serve.quantization: "
                "auto), which only the transformers engine does",
                "set serve.quantization: none to serve the adapters on the unquantized base "
                "with vLLM, or use serve.engine: transformers",
            )
        return self

    @model_validator(mode="after")
    def _sweep_metric_computable(self) -> JobSpec:
        if not self.sweep or self.sweep.metric != "task":
            return self
        primary = self.eval.resolved_primary(
            self.eval.resolved_task(self.data.labels, self.data.output_schema)
        )
        if primary in (*METRIC_GROUPS["bertscore"], *METRIC_GROUPS["consistency"]):
            raise SpecRuleError(
                "sweep.metric",
                self.sweep.metric,
                f"trials score the primary metric while training, and {primary!r} needs "
                "another model or sampled answers",
                "use metric: eval_loss, or a primary metric such as rouge_l or exact_match",
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
    "DataSpec",
    "DedupSpec",
    "DeepSpeedSpec",
    "EarlyStoppingSpec",
    "EvalSpec",
    "GateSpec",
    "IndexSpec",
    "JobSpec",
    "LoraSpec",
    "ModelSpec",
    "MonitorSpec",
    "PiiSpec",
    "QloraSpec",
    "RaySpec",
    "RetrievalDataSpec",
    "ScalingSpec",
    "ServeSpec",
    "SourceSpec",
    "SpecRuleError",
    "SweepParam",
    "SweepSpec",
    "ToxicitySpec",
    "TrainSpec",
    "WandbSpec",
]
