"""Connect to Ray: a cluster at an address, or an embedded local Ray bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ftray.spec import RaySpec

# Set for the driver and passed to every worker, so all Ray processes agree.
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # Workers' progress bars reach the driver as interleaved log lines: ftray prints its own.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # Ray Train would also copy every print into its log stream, so each line showed twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}

# Ray's CPU count is a scheduling token, not a core. An embedded Ray declares at least this
# many, so Ray Data's readers can run beside two training workers on a 2-core laptop.
MIN_LOCAL_CPUS = 4


def local_ray_env() -> dict[str, str]:
    """Environment that keeps an embedded Ray on loopback with one auth mode everywhere.

    Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 some Ray services bind every interface even
    when the node IP is 127.0.0.1. Ray turns on token auth for a new local cluster only when
    RAY_AUTH_MODE is unset, so CLI calls and workers could disagree: pin it.
    """
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
    }


def cluster_address(spec: RaySpec, address: str | None = None) -> str | None:
    """The cluster to join: --address, then the spec, then $RAY_ADDRESS; None means local."""
    return address or spec.address or os.environ.get("RAY_ADDRESS") or None


@contextmanager
def ray_session(spec: RaySpec, address: str | None = None) -> Iterator[None]:
    """Run the body inside a Ray session; shut down only a session this call started."""
    target = cluster_address(spec, address)
    if not target:
        # Ray caches RAY_AUTH_MODE in its config when first used: set it before, and refresh.
        os.environ.update(local_ray_env())
    import ray
    from ray._raylet import Config  # type: ignore[attr-defined]  # compiled; stubs lack it

    if ray.is_initialized():
        yield
        return
    Config.initialize("")
    env = dict(WORKER_ENV)
    if os.environ.get("FTRAY_INJECT_FAULT"):  # a test seam: sweep trials read it too
        env["FTRAY_INJECT_FAULT"] = os.environ["FTRAY_INJECT_FAULT"]
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if target:
        ray.init(address=target, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(
            num_cpus=spec.num_cpus or max(os.cpu_count() or 1, MIN_LOCAL_CPUS),
            _node_ip_address="127.0.0.1",
            # The dashboard (on loopback) serves the State API Ray Train polls, and the Jobs API.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env={"env_vars": env},
            configure_logging=True,
            logging_level=logging.WARNING,
        )
    try:
        yield
    finally:
        ray.shutdown()
