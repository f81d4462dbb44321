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
    metric: str = Field(
        default="eval_loss", description="Metric the trials are ranked by (reported by train)."
    )
    mode: Literal["min", "max"] = Field(default="min", description="Lower or higher is better.")
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha",
        description="'asha' stops trials that trail at each rung of evaluations (set "
        "train.eval_every so trials evaluate several times); 'fifo' runs every trial out.",
    )
    grace_period: int = Field(
        default=1, ge=1, description="ASHA: evaluations every trial gets before it can stop."
    )
    reduction_factor: int = Field(
        default=2, ge=2, description="ASHA: 1/reduction_factor of trials go on at each rung."
    )
    max_concurrent: int = Field(
        default=1,
        ge=1,
        description="Trials running at once; each takes train.scaling.num_workers workers.",
    )
