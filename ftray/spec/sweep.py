"""The sweep section: a Ray Tune search over `train.*` values."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ftray.spec._base import SpecRuleError, _Section


class SweepParam(_Section):
    """One dimension of a sweep's search space."""

    type: Literal["choice", "grid", "uniform", "loguniform", "randint"] = Field(
        description="'choice': one of `values` at random; 'grid': every one of `values` "
        "(times num_samples); 'uniform' / 'loguniform': a float in [low, high]; 'randint': an "
        "integer in [low, high)."
    )
    values: list | None = Field(default=None, description="For choice and grid.")
    low: float | None = Field(default=None, description="For uniform, loguniform, randint.")
    high: float | None = Field(default=None, description="For uniform, loguniform, randint.")

    @model_validator(mode="after")
    def _complete(self) -> SweepParam:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise SpecRuleError(
                    "values",
                    self.values,
                    f"a {self.type} needs a non-empty list of values",
                    "list the values to try, e.g. values: [1e-4, 3e-4]",
                )
        elif self.low is None or self.high is None:
            missing = "low" if self.low is None else "high"
            raise SpecRuleError(
                missing, None, f"a {self.type} needs low and high", f"set {missing}"
            )
        elif not self.low < self.high:
            raise SpecRuleError("high", self.high, f"not above low ({self.low})", "set low < high")
        elif self.type == "loguniform" and self.low <= 0:
            raise SpecRuleError(
                "low", self.low, "a loguniform range must be above 0", "set low > 0, e.g. 1e-5"
            )
        return self


class SweepSpec(_Section):
    """A Ray Tune search over `train.*` values; each trial is a full training run."""

    parameters: dict[str, SweepParam] = Field(
        min_length=1,
        description="Search space: a spec path under `train.` (e.g. 'train.lr', "
        "'train.lora.r', 'train.method') → its distribution. A trial's values are written "
        "into the spec, which is validated like any other.",
    )
    num_samples: int = Field(
        default=4, ge=1, description="Trials to run (for grid: repeats of the whole grid)."
    )
    metric: Literal["task", "eval_loss"] = Field(
        default="task",
        description="What ranks and prunes trials: 'task': the job's primary metric "
        "(eval.primary_metric, e.g. macro_f1, field_f1_micro, rouge_l) on `task_sample` "
        "validation examples, generated greedily at every evaluation; 'eval_loss': the loss "
        "on the validation split. Never the test (eval) split.",
    )
    mode: Literal["min", "max"] | None = Field(
        default=None,
        description="Unset: what the metric needs ('max' for task, 'min' for eval_loss); "
        "another value is refused.",
    )
    task_sample: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Validation examples each evaluation of a trial generates and scores when "
        "metric is 'task' (the first ones of the split: the same for every trial).",
    )
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha",
        description="'asha' stops trials that trail at each rung of evaluations (set "
        "train.eval_every so trials evaluate several times); 'fifo' runs every trial out.",
    )
    grace_period: int | None = Field(
        default=None,
        ge=1,
        description="ASHA: evaluations every trial gets before it can stop. Unset: from the "
        "trial budget, evaluations per trial // reduction_factor² (at least 1), so two "
        "rungs (three when trials evaluate often) stop trials before the last evaluation.",
    )
    reduction_factor: int | None = Field(
        default=None,
        ge=2,
        description="ASHA: 1/reduction_factor of trials go on at each rung. Unset: the "
        "largest of 4, 3, 2 whose square is at most the number of trials (2 when fewer "
        "than 9), so two rungs cut and still leave a trial to finish.",
    )
    seed: int = Field(
        default=0,
        description="Seed of the random search: the same seed samples the same trial values "
        "(the same space and num_samples).",
    )
    max_concurrent: int = Field(
        default=1,
        ge=1,
        description="Trials running at once; each takes train.scaling.num_workers workers.",
    )

    @property
    def resolved_mode(self) -> Literal["min", "max"]:
        """'max' for the task metric (higher is better), 'min' for the loss."""
        return "max" if self.metric == "task" else "min"

    @model_validator(mode="after")
    def _mode_fits(self) -> SweepSpec:
        if self.mode is not None and self.mode != self.resolved_mode:
            raise SpecRuleError(
                "mode",
                self.mode,
                f"{self.metric} is better when "
                f"{'higher' if self.resolved_mode == 'max' else 'lower'}",
                "leave sweep.mode unset",
            )
        return self
