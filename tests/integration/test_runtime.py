"""The embedded local Ray beside another Ray on the same machine (the session's cluster)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

# A Ray task asks the State API with no address, as Ray Train's placement-group cleaner does
# to see whether a trial's controller still lives.
SCRIPT = """
import ray
from ftray.runtime import ray_session
from ftray.spec import RaySpec

@ray.remote(num_cpus=0)
def alive_actors():
    from ray.util.state import list_actors
    return len(list_actors(filters=[("state", "=", "ALIVE")]))

with ray_session(RaySpec()):
    print("alive actors", ray.get(alive_actors.remote()))
"""


def test_embedded_ray_workers_find_their_own_state_api_beside_another_ray(ray_address):
    """With a second Ray running, Ray's own lookup of "the" cluster fails ("multiple active
    Ray instances"); an embedded session's processes are told their dashboard's address."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "alive actors" in result.stdout
