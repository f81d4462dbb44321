"""The wandb section: Weights & Biases tracking of runs, sweeps and evaluations."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftray.spec._base import _Section


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
