"""The go/no-go rule and the memory/cost estimates behind it."""

from __future__ import annotations

import pandas as pd
import pytest

from ftray.assess import DONT, FINE_TUNE, TOO_LITTLE, _serving, _task, decide, score_base, summary
from ftray.errors import UserError
from ftray.estimate import (
    ModelShape,
    estimate,
    gpu_price,
    model_shape,
    recommend,
    serving_cost,
    usd,
)
from ftray.models import resolve_model
from ftray.spec import ModelSpec
from ftray.specload import validate_spec
from ftray.store import Store

SPEC = validate_spec(
    {"project": "p", "model": {"base": "tiny"}, "data": {"sources": [{"path": "x.csv"}]}}, []
)
SEVEN_B = ModelShape(params=7_240_000_000, hidden=4096, layers=32, vocab=32000)


@pytest.mark.parametrize(
    ("usable", "score", "verdict"),
    [
        (10, None, TOO_LITTLE),
        (10, 0.99, TOO_LITTLE),
        (500, 0.95, DONT),
        (500, 0.9, DONT),
        (500, 0.3, FINE_TUNE),
        (60, 0.1, FINE_TUNE),
        (60, "unmeasured", FINE_TUNE),
    ],
)
def test_decision(usable, score, verdict):
    measured = None if score == "unmeasured" else score
    baseline = None if score is None else {"metric": "macro_f1", "score": measured}
    assert decide(usable, baseline, SPEC) == verdict


@pytest.mark.parametrize(
    ("plain", "with_retrieval", "verdict"),
    [(0.3, 0.95, DONT), (0.3, 0.5, FINE_TUNE), (0.95, 0.5, DONT), (0.3, None, FINE_TUNE)],
)
def test_the_base_model_with_retrieval_reaching_the_target_means_no_fine_tune(
    plain, with_retrieval, verdict
):
    rag = {"metric": "rouge_l", "score": with_retrieval, "index_id": "index-1", "k": 3}
    assert decide(500, {"metric": "rouge_l", "score": plain, "retrieval": rag}, SPEC) == verdict


def test_estimates_order_methods_by_memory_and_fit_the_gpu():
    common = {"tokens": 10_000_000, "micro_batch_tokens": 8192, "num_gpus": 1}
    on_a10 = {m: estimate(SEVEN_B, m, gpu="A10G-24GB", **common) for m in ("full", "lora", "qlora")}
    assert on_a10["full"].memory_gib > on_a10["lora"].memory_gib > on_a10["qlora"].memory_gib
    assert not on_a10["full"].fits and on_a10["lora"].fits and on_a10["qlora"].fits
    assert 100 < on_a10["full"].memory_gib < 130, "16 bytes per parameter"
    assert recommend(list(on_a10.values())) == "lora"
    sharded = estimate(SEVEN_B, "full", gpu="A100-80GB", **{**common, "num_gpus": 8})
    assert sharded.fits, "ZeRO-3 over 8 GPUs fits a 7B full fine-tune"
    assert sharded.hours < on_a10["full"].hours


def test_nothing_fits_says_so():
    huge = ModelShape(params=400_000_000_000, hidden=16384, layers=126, vocab=128256)
    found = [
        estimate(huge, m, tokens=1, micro_batch_tokens=1, gpu="T4-16GB", num_gpus=1)
        for m in ("full", "lora", "qlora")
    ]
    assert recommend(found).startswith("none fits")


def test_model_shape_reads_the_config_without_weights(tmp_path):
    shape = model_shape(resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path), "t")))
    assert shape.layers == 2 and shape.hidden == 64
    assert 10_000 < shape.params < 1_000_000


def _spec(**data) -> object:
    base = {"sources": [{"path": "x.csv"}], **data}
    return validate_spec({"project": "p", "model": {"base": "tiny"}, "data": base}, [])


def _answers(outputs: list[str], references: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": ["q"] * len(outputs),
            "completion": references,
            "base_output": outputs,
            "base_confidence": [0.9] * len(outputs),
        }
    )


def test_the_base_model_is_scored_on_the_tasks_primary_metric():
    labels = {"labels": ["a", "b", "c"]}
    task = _task(_spec(**labels))
    assert task.primary == "macro_f1"
    scores = score_base(_answers(["a", "b", "b", "a"], ["a", "b", "c", "a"]), task)
    assert scores["exact_match"] == 0.75
    assert scores["macro_f1"] == round((1 + 2 / 3 + 0) / 3, 4)

    task = _task(_spec(output_schema={"type": "object"}))
    outputs = ['{"city": "Paris", "day": "mon"}', "not json", '{"city": "Rome"}']
    references = ['{"city": "Paris", "day": "tue"}', '{"city": "Oslo"}', '{"city": "Rome"}']
    scores = score_base(_answers(outputs, references), task)
    assert task.primary == "field_f1_micro"
    assert scores["parse_rate"] == round(2 / 3, 4)
    assert scores["exact_match"] == round(1 / 3, 4)
    # fields: city ✓, day ✗, city missed, city ✓ → 2 hits of 3 predicted, 4 gold
    assert scores["field_f1_micro"] == round(2 * 2 / (3 + 4), 4)

    task = _task(_spec())
    scores = score_base(_answers(["the cat sat", "a dog"], ["the cat sat down", "a dog"]), task)
    assert task.primary == "rouge_l" and scores["rouge_l"] == round((6 / 7 + 1) / 2, 4)

    with pytest.raises(UserError, match="sampled answers"):
        spec = validate_spec(
            {
                "project": "p",
                "model": {"base": "tiny"},
                "data": {"sources": [{"path": "x.csv"}], **labels},
                "eval": {"primary_metric": "consistency"},
            },
            [],
        )
        _task(spec)


def test_usd_never_rounds_a_real_cost_to_zero():
    assert usd(0.00041234) == "$0.00041"
    assert usd(0.012) == "$0.012"
    assert usd(0.1) == "$0.10"
    assert usd(1234.5) == "$1,234.50"
    assert usd(7.1e-8) == "$0.000000071"
    assert usd(0) == "$0"


def test_serving_cost_per_million_requests_follows_tokens_and_the_users_price():
    tokens = 100
    a100 = serving_cost(SEVEN_B, tokens, "A100-80GB", gpu_price("A100-80GB"))
    # 2 FLOPs/param/token at 40% of 312 TFLOP/s, $4.10 per hour
    assert a100 == pytest.approx(1e6 * tokens * 2 * 7.24e9 / (312e12 * 0.4) / 3600 * 4.10)
    cheaper = serving_cost(SEVEN_B, tokens, "A100-80GB", gpu_price("A100-80GB", {"A100-80GB": 2}))
    assert cheaper == pytest.approx(a100 * 2 / 4.10)
    assert serving_cost(SEVEN_B, 2 * tokens, "A100-80GB", 4.10) == pytest.approx(2 * a100)


def test_summary_prints_small_costs_and_both_prompts(tmp_path):
    spec = validate_spec(
        {
            "project": "p",
            "model": {"base": "tiny"},
            "data": {"sources": [{"path": "x.csv"}]},
            "assess": {"gpu_prices": {"A100-80GB": 2.0}},
        },
        [],
    )
    shape = model_shape(resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path), "t")))
    found = [
        estimate(shape, m, tokens=5000, micro_batch_tokens=256, gpu="A100-80GB", num_gpus=1)
        for m in ("full", "lora", "qlora")
    ]
    requests = {
        "prompted_base": {"prompt_tokens": 300.0, "output_tokens": 4.0, "latency_s": 0.0304},
        "tuned": {"prompt_tokens": 60.0, "output_tokens": 4.0},
    }
    serving = _serving(spec, requests, shape)
    assert serving["usd_per_gpu_hour"] == 2.0
    assert serving["tuned"]["latency_s"] == pytest.approx(0.0304 / 304 * 64, rel=1e-2)
    assert serving["tuned"]["latency"].startswith("estimated")
    base_cost = serving["prompted_base"]["cost_per_million_usd"]
    assert 0 < serving["tuned"]["cost_per_million_usd"] < base_cost < 0.01
    manifest = {
        "decision": "fine-tune",
        "reasons": ["r"],
        "estimates": [e.as_dict() for e in found],
        "recommended_method": recommend(found),
        "serving": serving,
    }
    text = "\n".join(summary(manifest, spec))
    assert "$0.00 " not in text and "$0.00\n" not in text
    assert all(e.as_dict()["cost_usd"] > 0 for e in found)
    assert f"{usd(base_cost)} per 1M requests" in text
    assert "prompted base (few-shot)" in text and "tuned (zero-shot)" in text
    assert "(estimated)" in text and "(measured)" in text
