"""Shared fixtures: the repo's environment for Ray, and one local Ray cluster per session.

The cluster is a real `ray start --head` bound to 127.0.0.1; CLI tests pass its address with
`--address`, the way a user points ftray at a cluster.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftray.runtime import free_loopback_port as free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# What the Makefile exports; set here too so a bare `pytest` behaves the same.
ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
    "RAY_TMPDIR": str(ROOT / ".ray-tmp"),
    "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions"),
    "DS_ACCELERATOR": "cpu",
    "WANDB_MODE": "offline",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(ENV)
# Ray processes started from the tests (job entrypoints `ftray ...`, `ray` itself) find this
# environment's commands even when the venv is not activated, as under `make test`.
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def ray_cluster() -> dict[str, str]:
    """A local Ray head for the whole session, on loopback only; stopped at the end.

    Returns its GCS `address`, its `dashboard` URL (the Jobs API) and its Prometheus
    `metrics` URL.
    """
    Path(ENV["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    port, dashboard, metrics = free_port(), free_port(), free_port()
    # `ray start` with token auth needs a token (`ray.init` makes one, `ray start` does not).
    subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"], env=os.environ, capture_output=True
    )
    subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--metrics-export-port={metrics}",
            # its own agent port too: the default (52365) would clash with another session's head
            f"--dashboard-agent-listen-port={free_port()}",
            "--num-cpus=4",
            "--disable-usage-stats",
            f"--temp-dir={ENV['RAY_TMPDIR']}",
        ],
        check=True,
        env=os.environ,
        capture_output=True,
    )
    yield {
        "address": f"127.0.0.1:{port}",
        "dashboard": f"http://127.0.0.1:{dashboard}",
        "metrics": f"http://127.0.0.1:{metrics}/metrics",
    }
    stop_ray_head(ENV["RAY_TMPDIR"], port)


def stop_ray_head(temp_dir: str, port: int) -> None:
    """Stop the Ray processes of one head (and their workers), not every Ray on the machine.

    `ray stop` kills every Ray process of the user, which would end other test sessions (and
    any process whose command line names a Ray script).
    """
    import psutil

    procs = ray_processes(temp_dir, port)
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    # Some of them outlive SIGTERM (every session waited out a 10 s grace): 3 s, then SIGKILL.
    _, alive = psutil.wait_procs(list(procs.values()), timeout=3)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def ray_processes(temp_dir: str, port: int) -> dict:
    """The processes of one Ray head (by pid): Ray's own daemons name the head's temp dir or
    GCS port on their command line; workers are their descendants."""
    import psutil

    marks = (temp_dir, f"127.0.0.1:{port}")
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and any(mark in cmdline for mark in marks):
            roots.append(proc)
    procs = {p.pid: p for root in roots for p in [root, *_descendants(root)]}
    procs.pop(os.getpid(), None)
    return procs


def _descendants(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(scope="session")
def ray_address(ray_cluster) -> str:
    return ray_cluster["address"]


def cli(
    ray_address: str, *args: str, check: bool = True, timeout: float = 900, env: dict | None = None
):
    """Run the `ftray` command against a Ray cluster; returns the CompletedProcess."""
    done = subprocess.run(
        [str(BIN / "ftray"), *args],
        cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": ray_address, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"ftray {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done


@pytest.fixture
def run_cli(ray_address):
    """`cli` bound to the session's Ray."""
    return lambda *args, **kwargs: cli(ray_address, *args, **kwargs)
