"""The ray section: which Ray cluster a job runs on."""

from __future__ import annotations

from pydantic import Field

from ftray.spec._base import _Section


class RaySpec(_Section):
    """Which Ray cluster to run on."""

    address: str | None = Field(
        default=None,
        description="Ray cluster address ('auto', 'ray://host:10001', 'host:6379'). Unset: "
        "$RAY_ADDRESS, else an embedded local Ray bound to 127.0.0.1.",
    )
    num_cpus: int | None = Field(
        default=None,
        ge=1,
        description="CPUs an embedded local Ray declares (default: the machine's cores, at "
        "least 4, so data readers run beside two training workers).",
    )
