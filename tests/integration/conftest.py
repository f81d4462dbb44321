"""Fixtures shared by integration modules: a small learnable job on the tiny model."""

from __future__ import annotations

import random

import pytest
import yaml

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
            "consistency_examples": 8,
        },
    }
    path = folder / "gate.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, folder / "store" / "gate"
