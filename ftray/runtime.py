"""Connect to Ray: a cluster at an address, or an embedded local Ray bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
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

# Where Ray's State API clients find the dashboard (ray_constants), set for an embedded Ray.
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"

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
        # The dashboard (on loopback) serves the State API Ray Train polls, and the Jobs API.
        # Its address goes to every process: Ray Train's placement-group cleaner looks the
        # State API up by itself and, with a second Ray on the machine, failed ("multiple
        # active Ray instances"), so a stopped trial's workers kept their CPUs.
        dashboard = free_loopback_port()
        env[API_SERVER_ENV] = f"http://127.0.0.1:{dashboard}"
        before = os.environ.get(API_SERVER_ENV)
        os.environ[API_SERVER_ENV] = env[API_SERVER_ENV]
        ray.init(
            num_cpus=spec.num_cpus or max(os.cpu_count() or 1, MIN_LOCAL_CPUS),
            _node_ip_address="127.0.0.1",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard,
            runtime_env={"env_vars": env},
            configure_logging=True,
            logging_level=logging.WARNING,
        )
    try:
        yield
    finally:
        ray.shutdown()
        if not target:
            os.environ.pop(API_SERVER_ENV, None)
            os.environ.update({API_SERVER_ENV: before} if before else {})


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
