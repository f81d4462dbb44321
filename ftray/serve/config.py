"""What a Serve replica is built from: the job's whole `serve`, `monitor` and `model` sections
(no list of chosen fields to keep) and the few values around them. It crosses Ray as JSON
(`model_dump(mode="json")`) and is validated again in the replica.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ftray.placement import serving_config
from ftray.spec import JobSpec, ModelSpec, MonitorSpec, QloraSpec, ServeSpec
from ftray.store import Store


class ReplicaConfig(BaseModel):
    """A replica's settings; `model_dir` is the resolved base model's local folder, `serving`
    the base's quantization and dtype (`ftray.placement.serving_config`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str
    project: str
    model_dir: str
    model: ModelSpec
    system_prompt: str | None
    output_schema: dict | None = None  # data.output_schema: the vllm engine constrains to it
    serve: ServeSpec
    monitor: MonitorSpec
    serving: dict

    @property
    def quantization(self) -> QloraSpec | None:
        """The served base's bitsandbytes settings (None: unquantized)."""
        bnb = self.serving["bitsandbytes"]
        return None if bnb is None else QloraSpec.model_validate(bnb)

    @classmethod
    def of(cls, spec: JobSpec, store: Store, model_dir: str) -> ReplicaConfig:
        """The settings of `spec`'s replicas."""
        return cls(
            storage=store.storage,
            project=spec.project,
            model_dir=model_dir,
            model=spec.model,
            system_prompt=spec.data.system_prompt,
            output_schema=spec.data.output_schema,
            serve=spec.serve,
            monitor=spec.monitor,
            serving=serving_config(spec),
        )
