"""The assess section: should this job fine-tune at all, and what would it cost."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ftray.spec._base import _Section

# the GPU types ftray.estimate.GPUS knows (memory, peak bf16 TFLOP/s, price)
GpuType = Literal["T4-16GB", "L4-24GB", "A10G-24GB", "A100-40GB", "A100-80GB", "H100-80GB"]


class AssessSpec(_Section):
    """The go/no-go before training: enough data? does the base model already do the job?"""

    enabled: bool = Field(default=True, description="`ftray run` assesses before training.")
    min_examples: int = Field(
        default=50, ge=1, description="Refuse to train with fewer usable training examples."
    )
    warn_examples: int = Field(
        default=300, ge=1, description="Warn below this many usable training examples."
    )
    target: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Value of the task's primary metric (eval.primary_metric; by default "
        "macro_f1 for classification, field_f1_micro for json, rouge_l for generation) the "
        "prompted base model must reach for the verdict 'don't fine-tune'.",
    )
    max_examples: int = Field(
        default=50, ge=1, description="Held-out examples the base model is scored on."
    )
    few_shot: int = Field(
        default=3,
        ge=0,
        le=16,
        description="Solved training examples shown before each query (distinct answers "
        "first), as a user writing a prompt would, to judge the base model at its best.",
    )
    retrieval_k: int = Field(
        default=3,
        ge=0,
        le=32,
        description="Chunks of the job's index (the newest `ftray index` built) before each "
        "held-out question for the prompted base + retrieval arm, when the job has an `index:` "
        "section but data.retrieval is unset (with it, the dataset's own k chunks are used); "
        "0: no such arm.",
    )
    gpu: GpuType = Field(
        default="A100-80GB", description="GPU type the training and serving estimates are for."
    )
    num_gpus: int = Field(default=1, ge=1, description="GPUs the estimates are for.")
    base_config: str | None = Field(
        default=None,
        description="A config.json of the base model (a path, relative to the folder ftray "
        "runs in) that the estimates read instead of the model's own, so `ftray assess "
        "--estimates-only` needs neither the weights nor the network (e.g. "
        "jobs/gpu/configs/llama-3.1-8b.json). Unset: the base model's config.",
    )
    gpu_prices: dict[
        GpuType,
        Annotated[float, Field(gt=0)],
    ] = Field(
        default_factory=dict,
        description="USD per GPU-hour by GPU type, replacing the indicative on-demand prices "
        "(T4 0.53, L4 0.80, A10G 1.01, A100-40GB 3.67, A100-80GB 4.10, H100 6.98), e.g. "
        "{A100-80GB: 1.8} for a reserved price.",
    )
