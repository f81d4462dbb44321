"""Fixtures shared by integration modules: a small learnable job on the tiny model."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli
from tests.integration.colors import query


@pytest.fixture(scope="session")
def colors_job(tmp_path_factory):
    """A job whose answer is 'red' or 'blue': the tiny model learns at least the majority
    answer in a few dozen steps, while the untrained base model answers neither."""
    folder = tmp_path_factory.mktemp("colors")
    rng = random.Random(0)
    rows = ["text,color"]
    for i in range(360):
        rows.append(",".join(query(rng, i)))
    (folder / "colors.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "project": "gate",
        "storage": str(folder / "store"),
        "model": {"base": "tiny"},
        "data": {
            "sources": [{"path": str(folder / "colors.csv")}],
            "prompt_field": "text",
            "completion_field": "color",
            "labels": ["red", "blue"],
            "eval_fraction": 0.15,
            "dedup": {"near": False},
        },
        "assess": {"enabled": False},
        # W&B runs are test_train's and test_pipeline's; here each training, evaluation and
        # re-gated verdict would start one (seconds each) that no test reads
        "wandb": {"mode": "disabled"},
        "train": {
            "method": "lora",
            "epochs": 3,
            "max_steps": 80,
            "batch_size": 8,
            "lr": 0.02,
            "log_every": 10,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "scaling": {"num_workers": 1},
        },
        "eval": {
            "max_examples": 60,
            "max_new_tokens": 6,
            "batch_size": 30,
            "bootstrap_samples": 500,
            # the classification default without consistency, whose sampled answers are a
            # second generation pass (new Ray Data actors loading every arm);
            # test_pipeline's evaluations sample them
            "metrics": ["exact_match", "classification", "hallucination"],
        },
    }
    path = folder / "gate.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, folder / "store" / "gate"


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, ray_address) -> Path:
    """jobs/tiny.yaml's dataset and tiny model, prepared once per session (`tiny_store`).

    A prepare is most of a small job's time (Ray Data checks, dedup shuffles); tests about
    later stages start from a copy, which their `prepare` reuses as it would on a user's
    store. test_pipeline and test_prepare run prepare for themselves."""
    seed = tmp_path_factory.mktemp("tiny-seed")
    cli(ray_address, "prepare", "jobs/tiny.yaml", "--set", f"storage={seed}")
    return seed / "tiny"


def seed_tiny(storage: Path, tiny_prepared: Path) -> Path:
    """`storage` holding a copy of the prepared tiny project (jobs/tiny.yaml's `storage`)."""
    shutil.copytree(tiny_prepared, storage / "tiny")
    return storage


@pytest.fixture
def tiny_store(tmp_path, tiny_prepared) -> Path:
    """A fresh storage folder for jobs/tiny.yaml, its dataset already prepared."""
    return seed_tiny(tmp_path, tiny_prepared)
