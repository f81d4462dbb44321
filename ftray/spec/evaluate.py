"""The evaluate stage's spec: metrics per task, the A/B settings and the promotion gate."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ftray.spec._base import _Section

# Scalar metrics each `eval.metrics` entry produces (latency and output tokens always come).
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "exact_match": ("exact_match",),
    "classification": (
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "precision_at_threshold",
        "recall_at_threshold",
        "abstain_rate",
    ),
    "json": (
        "parse_rate",
        "schema_compliance",
        "field_precision",
        "field_recall",
        "field_f1_micro",
        "field_f1_macro",
        "field_f1_micro_normalized",
        "field_f1_macro_normalized",
        "invented_field_rate",
    ),
    "rouge_l": ("rouge_l",),
    "bertscore": ("bertscore_f1",),
    "hallucination": ("hallucination_rate",),
    "consistency": ("consistency",),
}
METRIC_NAMES = tuple(name for names in METRIC_GROUPS.values() for name in names)
LOWER_IS_BETTER = ("hallucination_rate", "invented_field_rate", "abstain_rate")
TASK_METRICS = {
    "classification": ["exact_match", "classification", "hallucination", "consistency"],
    "json": ["exact_match", "json", "hallucination", "consistency"],
    "generation": ["exact_match", "rouge_l", "bertscore", "hallucination", "consistency"],
}
PRIMARY_METRIC = {"classification": "macro_f1", "json": "field_f1_micro", "generation": "rouge_l"}
MetricName = Literal[METRIC_NAMES]  # type: ignore[valid-type]


class GateSpec(_Section):
    """Promotion rules: the candidate replaces the incumbent only if every rule holds."""

    promote: bool = Field(
        default=True,
        description="Promote a candidate that passes to 'production' in the registry; false "
        "records the verdict only (promote by hand with `ftray models promote`).",
    )
    min_improvement: float = Field(
        default=0.0,
        description="δ: the primary metric must reach the incumbent's + δ (negative allows a "
        "small loss, e.g. for a cheaper model).",
    )
    require_significant: bool = Field(
        default=True,
        description="The paired-bootstrap interval of (candidate − incumbent) on the primary "
        "metric must lie above δ, i.e. exclude δ (with δ = 0: exclude 0).",
    )
    max_regression: float = Field(
        default=0.02,
        ge=0,
        description="ε: no other quality metric may be worse than the incumbent's by more than "
        "this (absolute; latency and token counts are reported, not gated), unless "
        "`max_regression_by_metric` names it.",
    )
    max_regression_by_metric: dict[MetricName, Annotated[float, Field(ge=0)] | None] = Field(
        default_factory=dict,
        description="Per metric, its own ε (e.g. {hallucination_rate: 0.05}); null exempts the "
        "metric from the regression rule (it is still reported).",
    )
    floors: dict[MetricName, float] = Field(
        default_factory=dict,
        description="Per metric, a value the candidate must reach (candidate ≥ floor), "
        "whatever the incumbent scores, e.g. {field_recall: 0.8}.",
    )
    ceilings: dict[MetricName, float] = Field(
        default_factory=dict,
        description="Per metric, a value the candidate must not exceed (candidate ≤ ceiling), "
        "e.g. {invented_field_rate: 0.05}.",
    )
    min_signal: int = Field(
        default=10,
        ge=1,
        description="Rates measured on part of the answers (hallucination_rate: over answers "
        "that could be checked; invented_field_rate: over predicted fields) are compared "
        "with the incumbent only when both arms have at least this many; otherwise the rule "
        "is skipped, and says so. A floor or ceiling needs at least one.",
    )
    max_hallucination_rate: float | None = Field(
        default=None, ge=0, le=1, description="Ceiling on the candidate's hallucination rate."
    )
    min_schema_compliance: float | None = Field(
        default=None, ge=0, le=1, description="Floor on the candidate's JSON-Schema compliance."
    )
    min_primary: float | None = Field(
        default=None,
        description="Floor on the candidate's primary metric, whatever the incumbent scores.",
    )
    max_general_ppl_ratio: float | None = Field(
        default=None,
        gt=0,
        description="Forgetting check: ceiling on the candidate's perplexity on the general-"
        "text sample divided by the base model's (e.g. 1.2: at most 20% worse); unset: "
        "reported only.",
    )
    min_human_win_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Floor on the candidate's win rate in human pairwise review (`ftray "
        "review`; ties count half, 'both bad' is left out). Set, the verdict waits: `ftray eval` "
        "leaves the candidate pending, and `ftray review decide` settles the gate once "
        "`min_human_ratings` ratings are in.",
    )
    min_human_ratings: int = Field(
        default=20,
        ge=1,
        description="Ratings (all reviewers, 'both bad' left out) the human win rate needs "
        "before the gate decides.",
    )


class EvalSpec(_Section):
    """The evaluate stage: the candidate vs the incumbent on held-out examples, then the gate."""

    task: Literal["auto", "classification", "json", "generation"] = Field(
        default="auto",
        description="What the answers are: 'classification' (one of data.labels), 'json' "
        "(checked against data.output_schema when set), 'generation' (free text). 'auto': "
        "classification when data.labels is set, json when data.output_schema is, else "
        "generation.",
    )
    metrics: list[Literal[tuple(METRIC_GROUPS)]] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Metric groups to compute (see the README's evaluation section). Unset: "
        "classification → exact_match, classification, hallucination, consistency; json → "
        "exact_match, json, hallucination, consistency; generation → exact_match, rouge_l, "
        "bertscore, hallucination, consistency.",
    )
    primary_metric: str | None = Field(
        default=None,
        description="The metric the gate compares first. Unset: macro_f1 (classification), "
        "field_f1_micro (json), rouge_l (generation).",
    )
    incumbent: str = Field(
        default="auto",
        pattern=r"^(auto|base|production|model-[0-9a-f]{12})$",
        description="What the candidate is compared with: 'base' (the base model with the "
        "job's prompt), 'production' (the registry's production model), a model id, or "
        "'auto' (production when there is one, else base).",
    )
    confidence_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Classification: answers whose probability (the product of their tokens' "
        "probabilities) is below this abstain.",
    )
    max_examples: int = Field(
        default=200, ge=1, description="Evaluate at most this many held-out examples."
    )
    max_new_tokens: int = Field(default=16, ge=1, le=4096, description="Generation limit.")
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Examples generated together (also by assess). Unset: 16 on CPU, 64 with "
        "a GPU.",
    )
    num_workers: int = Field(default=1, ge=1, description="Ray Data generation actors.")
    cpus_per_worker: float = Field(default=1, gt=0, description="CPUs reserved per actor.")
    gpus_per_worker: float = Field(
        default=0,
        ge=0,
        description="GPUs reserved per generation actor (evaluate and assess) and for the "
        "BERTScore actor; the models load on them (0: CPU; a fraction shares a GPU; 2 or "
        "more shard each model across them).",
    )
    consistency_samples: int = Field(
        default=3, ge=2, description="Consistency: answers sampled per example."
    )
    consistency_examples: int = Field(
        default=16, ge=1, description="Consistency: examples sampled (the first held-out ones)."
    )
    consistency_temperature: float = Field(
        default=0.7, gt=0, description="Consistency: sampling temperature."
    )
    bootstrap_samples: int = Field(
        default=1000, ge=100, description="Paired-bootstrap resamples for the A/B intervals."
    )
    confidence_level: float = Field(
        default=0.95, gt=0.5, lt=1, description="Coverage of the A/B intervals."
    )
    worst_examples: int = Field(
        default=10, ge=0, description="Examples the report lists where the candidate does worst."
    )
    seed: int = Field(default=0, description="Seed of the bootstrap and of sampled answers.")
    gate: GateSpec = Field(default_factory=GateSpec, description="Promotion rules.")

    def resolved_task(self, labels: list | None, output_schema: dict | None) -> str:
        """The task, with 'auto' decided from the data spec."""
        if self.task != "auto":
            return self.task
        return "classification" if labels else "json" if output_schema is not None else "generation"

    def resolved_metrics(self, task: str) -> list[str]:
        """The metric groups to compute for `task`."""
        return list(self.metrics) if self.metrics is not None else TASK_METRICS[task]

    def resolved_primary(self, task: str) -> str:
        """The primary metric's name for `task`."""
        return self.primary_metric or PRIMARY_METRIC[task]
