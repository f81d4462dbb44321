"""`ftray assess` and the go/no-go it gives `ftray run`."""

from __future__ import annotations

import json

import pytest

from ftray.exits import ASSESS_STOP
from tests.integration.conftest import seed_tiny


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_prepared):
    return seed_tiny(tmp_path_factory.mktemp("assess"), tiny_prepared)


def test_assess_says_fine_tune_with_estimates(store, run_cli):
    warn = "assess.warn_examples=1000"
    out = run_cli("assess", "jobs/tiny.yaml", "--set", f"storage={store}", "--set", warn).stdout
    assert "verdict: fine-tune" in out
    assert "recommended method: lora" in out
    (folder,) = (store / "tiny" / "assessments").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["decision"] == "fine-tune"
    (dataset,) = (store / "tiny" / "datasets").iterdir()
    held_out = json.loads((dataset / "manifest.json").read_text())["counts"]["eval"]
    assert manifest["baseline"]["examples"] == min(held_out, 50)  # assess.max_examples
    # judged on the task's primary metric, with the few-shot prompt a user would write
    baseline = manifest["baseline"]
    assert baseline["metric"] == "macro_f1" and baseline["few_shot"] == 3
    assert 0 <= baseline["score"] <= 1 and "exact_match" in baseline["scores"]
    assert "the prompted base model scores macro_f1" in out
    serving = manifest["serving"]
    base, tuned = serving["prompted_base"], serving["tuned"]
    assert base["prompt_tokens"] > tuned["prompt_tokens"] > 0, "few-shot examples cost tokens"
    assert base["latency"] == "measured" and tuned["latency"] == "estimated"
    assert base["cost_per_million_usd"] > tuned["cost_per_million_usd"] > 0
    assert out.count("per 1M requests") == 2
    assert "$0.00 " not in out, "a small cost is printed with its digits"
    assert {e["method"] for e in manifest["estimates"]} == {"full", "lora", "qlora"}
    assert f"only {manifest['usable_examples']} usable training examples (warn below 1000)" in out


def test_run_stops_when_the_base_model_meets_the_target(store, run_cli):
    done = run_cli(
        "run",
        "jobs/tiny.yaml",
        "--set",
        f"storage={store}",
        "--set",
        "assess.target=0.0",
        check=False,
    )
    assert done.returncode == ASSESS_STOP, done.stdout + done.stderr
    assert "verdict: don't fine-tune" in done.stdout
    assert "ftray run --force" in done.stdout
    assert "▶ train" not in done.stdout
    assert not (store / "tiny" / "runs").exists()


def test_run_refuses_too_little_data_even_with_force(store, run_cli):
    done = run_cli(
        "run",
        "jobs/tiny.yaml",
        "--set",
        f"storage={store}",
        "--set",
        "assess.min_examples=100000",
        "--force",
        check=False,
    )
    assert done.returncode == ASSESS_STOP
    assert "not enough data" in done.stdout and "assess.min_examples" in done.stdout
