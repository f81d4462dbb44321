"""Training spread over a two-node Ray cluster on loopback, one worker per node."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli, free_port


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a second node, each a real raylet, all on 127.0.0.1.

    `ray start` refuses a second node unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, and with it
    Ray binds every interface; `ray.cluster_utils.Cluster` starts the same processes with the
    loopback-only setting kept.
    """
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
        },
    )
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_two_worker_training_spreads_over_both_nodes(two_nodes, tiny_store):
    cli(
        two_nodes.address,
        "train",
        "jobs/tiny.yaml",
        "--set",
        f"storage={tiny_store}",
        "--set",
        "train.scaling.placement_strategy=STRICT_SPREAD",
        "--set",
        "train.max_steps=2",
    )
    manifest = json.loads(next((tiny_store / "tiny" / "runs").glob("*/manifest.json")).read_text())
    nodes = manifest["worker_nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
    assert manifest["loss_last"] is not None
