"""The training loop's typed input: what crosses from the driver to every Ray Train worker.

The driver builds a `LoopConfig`, sends `model_dump(mode="json")` (plain data crosses Ray)
and each worker validates it again on arrival, so a field added here reaches the loop or
fails loudly, never silently.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ftray.spec import TrainSpec


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProbeConfig(_Frozen):
    """The task probe of a sweep trial: the job's primary metric on a validation sample."""

    task: dict = Field(description="`ftray.evaluate.score.Task` fields.")
    examples: list[dict] = Field(description="Validation rows: prompt, messages, completion.")
    max_new_tokens: int
    batch_size: int = 8


class FaultConfig(_Frozen):
    """A test seam ($FTRAY_INJECT_FAULT): kill worker `rank` once, right after `step`."""

    step: int
    rank: int
    marker: str


class LoopConfig(_Frozen):
    """Everything `train_loop` reads. `steps_per_epoch` and `total_steps` are equal on every
    worker, so none waits on a collective the others never reach."""

    train: TrainSpec
    model_dir: str
    chat_template: str | None = Field(
        default=None, description="model.chat_template: what the task probe renders with."
    )
    attention: str = Field(default="sdpa", description="model.attention: training's kernel.")
    init_weights: str | None = Field(
        default=None,
        description="Warm start: URI of the parent's adapter or model folder (train.init_from).",
    )
    dtype: str
    steps_per_epoch: int
    total_steps: int
    run_id: str | None = None
    pack_length: int | None = None
    wandb: dict | None = Field(default=None, description="From `tracking.wandb_settings`.")
    trial: dict | None = Field(default=None, description="sweep_id, trial_id, params.")
    probe: ProbeConfig | None = None
    fault: FaultConfig | None = None
    cache_validation: bool = Field(
        default=False,
        description="Keep the validation shard's batches in worker memory after the first "
        "evaluation (set when the split is small): later evaluations skip Ray Data's pipeline "
        "start (seconds each on a small split).",
    )

    @property
    def score_attribute(self) -> tuple[str, str]:
        """What ranks checkpoints: the probe's task metric (higher is better; ties go to the
        lower validation loss) or the validation loss."""
        return ("selection_score", "max") if self.probe else ("eval_loss", "min")
