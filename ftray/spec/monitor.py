"""The monitor stage's spec: request sampling in the Serve app, feedback, checks and alerts."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from ftray.spec._base import _Section

# `any`, then the names of `ftray monitor`'s checks (ftray.monitor.stage reports no other;
# tested). One Literal, not a union, so a misspelt name gets one error listing them all.
OnAlert = Literal[
    "any",
    "input_drift_psi",
    "label_shift_psi",
    "length_drift_psi",
    "empty_or_refusal_rate",
    "schema_compliance",
    "correction_agreement",
]
CHECKS = get_args(OnAlert)[1:]


class RetrainSpec(_Section):
    """When `ftray monitor` starts `ftray retrain` by itself (any one trigger is enough)."""

    on_alerts: list[OnAlert] = Field(
        default=[],
        description="Checks whose alert starts a retrain ('any': every check's); [] never.",
    )
    min_corrections: int | None = Field(
        default=None,
        ge=1,
        description="Start a retrain once this many accepted corrections are in no dataset "
        "version yet; unset: never.",
    )
    every_hours: float | None = Field(
        default=None,
        gt=0,
        description="Start a retrain when the last one (started by `ftray monitor`) is this old, "
        "or there was none; unset: never.",
    )


class MonitorSpec(_Section):
    """Post-deployment monitoring: what the Serve app samples, and `ftray monitor`'s checks."""

    sample_rate: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of requests (and their answers) the Serve app logs, per model; 0 "
        "turns sampling off.",
    )
    redact_pii: bool = Field(
        default=True,
        description="Replace emails, phone and card numbers in sampled text (and feedback) "
        "with [EMAIL], [PHONE], [CARD_NUMBER] before anything is written.",
    )
    flush_rows: int = Field(
        default=256, ge=1, description="Samples buffered per replica before a parquet write."
    )
    flush_interval_s: float = Field(
        default=30, gt=0, description="Buffered samples are written at least this often."
    )
    accept_corrections: Literal["review", "auto"] = Field(
        default="review",
        description="Corrections sent to POST /v1/feedback enter the next dataset version once "
        "accepted: 'review' waits for a person (`ftray feedback accept`, or the review page); "
        "'auto' accepts every correction (trusted internal sources only).",
    )
    window_hours: float = Field(
        default=24, gt=0, description="`ftray monitor` checks the samples of the last N hours."
    )
    min_samples: int = Field(
        default=50, ge=1, description="Fewer samples in the window: checks report, never alert."
    )
    max_input_drift_psi: float = Field(
        default=0.2,
        gt=0,
        description="Input embedding drift: PSI of the prompts' cosine similarity to the "
        "training prompts' centroid (all-MiniLM-L6-v2), samples vs training set. Alert above.",
    )
    max_label_shift_psi: float = Field(
        default=0.25,
        gt=0,
        description="Classification: PSI of the answers' label distribution vs the training "
        "set's. Alert above.",
    )
    max_length_drift_psi: float = Field(
        default=0.25,
        gt=0,
        description="PSI of answer lengths (tokens) vs the model's own answers on the "
        "held-out set. Alert above.",
    )
    max_empty_or_refusal_rate: float = Field(
        default=0.05, ge=0, le=1, description="Share of empty or refusing answers. Alert above."
    )
    min_schema_compliance: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description="JSON tasks: share of answers valid against data.output_schema. Alert below.",
    )
    min_correction_agreement: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Where feedback carries corrections: share of answers equal to them. Alert "
        "below.",
    )
    webhook_url_env: str | None = Field(
        default=None,
        description="Name of an environment variable holding a webhook URL (Slack-compatible "
        "JSON is posted there for each alert); unset: alerts are stored and logged only.",
    )
    embedding_gpus: float = Field(
        default=0,
        ge=0,
        description="GPUs reserved for the input-drift check's embedding actor (0: CPU).",
    )
    alert_examples: int = Field(default=3, ge=0, description="Example requests an alert carries.")
    retrain: RetrainSpec = Field(
        default_factory=RetrainSpec,
        description="Triggers that make `ftray monitor` run `ftray retrain` itself.",
    )
