"""What a stage returns: a reference to the artifact it wrote (or found) under the store.

Every stage returns an `ArtifactRef`: the artifact's `id`, the `uri` of its folder, its
`manifest` (what `manifest.json` holds) and whether it was `reused` (finished before, with
the same inputs, so nothing ran). The subclasses read what callers need out of the manifest;
they live here, not in the stages, so a stage that takes another stage's artifact (evaluate
takes a run) imports this module, not that stage and all it loads (Ray Train, Ray Tune).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftray.store import Store


@dataclass(frozen=True)
class ArtifactRef:
    """A finished artifact: its id, the URI where it lives, its manifest, and whether it was
    reused."""

    id: str
    uri: str
    manifest: dict
    reused: bool


def reuse(store: Store, *folder: str) -> dict | None:
    """The manifest of the finished artifact in `folder`, or None when it has not finished
    (a stage then builds it; the manifest is written last, so its presence means complete)."""
    return store.manifest(*folder) if store.is_complete(*folder) else None


@dataclass(frozen=True)
class DatasetRef(ArtifactRef):
    """A prepared dataset (`datasets/<dataset-id>/`): train, eval and quarantine parquet."""


@dataclass(frozen=True)
class IndexRef(ArtifactRef):
    """A retrieval index (`indexes/<index-id>/`): chunks, vectors and BM25 over a corpus."""


# An assessment's decisions; here, not in the stage, so `ftray.exits` can map them to codes.
FINE_TUNE, DONT, TOO_LITTLE = "fine-tune", "don't fine-tune", "not enough data"


@dataclass(frozen=True)
class AssessRef(ArtifactRef):
    """An assessment (`assessments/<assess-id>/`): the verdict on fine-tuning and its costs."""

    @property
    def decision(self) -> str:
        """FINE_TUNE, DONT or TOO_LITTLE."""
        return self.manifest["decision"]


@dataclass(frozen=True)
class RunRef(ArtifactRef):
    """A finished training run: its weights (an adapter, or a full model) and metrics."""

    @property
    def weights_uri(self) -> str:
        return self.manifest["weights_uri"]

    @property
    def kind(self) -> str:
        """ "adapter" (lora, qlora) or "model" (full)."""
        return self.manifest["kind"]


@dataclass(frozen=True)
class SweepRef(ArtifactRef):
    """A finished sweep (`sweeps/<sweep-id>/`): its leaderboard and the winning trial's run."""

    winner: RunRef


@dataclass(frozen=True)
class EvalRef(ArtifactRef):
    """A finished evaluation; `manifest` holds metrics, comparison and the gate's verdict.
    `regated`: a reused evaluation judged again by a changed `eval.gate`."""

    regated: bool = False

    @property
    def metrics(self) -> dict:
        return self.manifest["metrics"]

    @property
    def gate(self) -> dict:
        return self.manifest["gate"]


@dataclass(frozen=True)
class MonitorRef(ArtifactRef):
    """One monitoring run (`monitor/checks/<sequence>.json`): the served models it checked,
    their checks (each naming its `model`) and the alerts among them."""

    @property
    def models(self) -> list[dict]:
        """Per model: `model`, `role`, `samples`, `split_samples`, `enough_samples`,
        `reference`."""
        return self.manifest["models"]

    @property
    def checks(self) -> list[dict]:
        return self.manifest["checks"]

    @property
    def alerts(self) -> list[dict]:
        return [check for check in self.checks if check["alert"]]
