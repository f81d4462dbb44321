"""`ftray monitor` per served model, without Ray: samples grouped by the model that answered,
alerts naming it (file, record, Prometheus, latest.json, report, progress), a model with too
few samples reported and never alerted, each registry model's own reference, sample files
from before the sampler recorded the model, and retrain triggers on production's alerts only.
Input drift per model needs the embedding actor: tests/integration/test_monitoring_models.py."""

from __future__ import annotations

import asyncio
import time

import pyarrow as pa
import pytest

from ftray import registry, routing
from ftray.monitor import feedback
from ftray.monitor.reference import UNRECORDED, references
from ftray.monitor.samples import load_samples
from ftray.monitor.stage import monitor
from ftray.monitor.trigger import retrain_reason
from ftray.progress import Progress
from ftray.spec import JobSpec
from ftray.store import Store, utc_stamp
from tests.unit.test_monitoring import _row, _sampler


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), "proj")


def _spec(tmp_path, **monitor) -> JobSpec:
    return JobSpec.model_validate(
        {
            "project": "proj",
            "storage": str(tmp_path / "store"),
            "model": {"base": "tiny"},
            "data": {"sources": [{"path": "data.csv"}], "labels": ["red", "blue"]},
            "monitor": {"min_samples": 20, **monitor},
        }
    )


async def _traffic(store, rows: list[dict]) -> None:
    """What the Serve app's sampler writes for these answered requests, timed now."""
    sampler = _sampler(store, flush_rows=1000)
    now = utc_stamp()
    for row in rows:
        sampler.record({**row, "time": now})
    await sampler.drain()


def _answers(model: str, outputs: list[str], start: int = 0) -> list[dict]:
    """Sampled requests `model` answered with `outputs`."""
    return [
        {**_row(start + i), "request_id": f"{model}-{i}", "model": model, "output": output}
        for i, output in enumerate(outputs)
    ]


def test_alerts_name_the_model_and_a_model_with_few_samples_is_reported(store, tmp_path, capsys):
    """Two models refuse every answer: the one with enough samples alerts, by name, in every
    place an alert goes; the other is reported with its count, and stays quiet."""
    rows = _answers("base", [""] * 30) + _answers("model-few", [""] * 5, start=100)
    asyncio.run(_traffic(store, rows + _answers("model-fine", ["red"] * 25, start=200)))
    pooled = {"check": "empty_or_refusal_rate", "value": 0.1, "threshold": 0.05, "n": 60}
    pooled |= {"direction": "max", "alert": True, "detail": "6 empty", "examples": []}
    before = {"time": "2026-11-01T00:00:00Z", "window_hours": 24, "samples": 60}
    before |= {"reference": "production model m (dataset d)", "checks": [pooled]}
    store.write_event(before, "monitor", "checks")  # a run from before checks were per model
    ref = monitor(_spec(tmp_path), store, Progress())

    by_model = {m["model"]: m for m in ref.models}
    assert by_model["base"]["samples"] == 30 and by_model["base"]["enough_samples"]
    assert by_model["model-few"] == {
        "model": "model-few",
        "role": "not in the registry",
        "samples": 5,
        "split_samples": 0,
        "enough_samples": False,
        "reference": "none (model-few is not in the registry)",
    }
    assert by_model["base"]["reference"] == "none (no dataset yet)"
    refusals = {k["model"]: k for k in ref.checks if k["check"] == "empty_or_refusal_rate"}
    assert refusals["model-few"]["value"] == 1.0 and not refusals["model-few"]["alert"]
    assert "5 observed; 20 needed to alert" in refusals["model-few"]["detail"]
    assert refusals["model-fine"]["value"] == 0.0 and not refusals["model-fine"]["alert"]
    (alert,) = ref.alerts
    assert (alert["model"], alert["check"]) == ("base", "empty_or_refusal_rate")
    assert {e["model"] for e in alert["examples"]} == {"base"}

    (name,) = store.fs.ls(store.path("monitor", "alerts"))
    assert name.endswith("-base-empty_or_refusal_rate.json")
    record = store.read_json("monitor", "alerts", name.rsplit("/", 1)[-1])
    assert record["model"] == "base" and record["n"] == 30
    prom = store.fs.cat(store.path("monitor", "metrics.prom")).decode()
    assert (
        'ftray_monitor_alert{project="proj",model="base",check="empty_or_refusal_rate"} 1' in prom
    )
    assert (
        'ftray_monitor_alert{project="proj",model="model-few",check="empty_or_refusal_rate"} 0'
        in prom
    )
    latest = store.read_json("monitor", "latest.json")
    assert latest["models"] == ref.models and latest["checks"] == ref.checks
    report = store.fs.cat(store.path("monitor", "report.md")).decode()
    assert "| model-few | not in the registry | 5 | 0 | no: too few samples |" in report
    assert "2 runs" in report and "![empty_or_refusal_rate](plots/empty_or_refusal_rate.png)" in (
        report
    )
    out = capsys.readouterr().out
    assert "model-few (not in the registry): 5 samples, too few to alert (20 needed)" in out
    assert "on model base over 30 samples" in out


def _dataset(store, dataset_id: str, labels: list[str], prompts: list[str] | None = None) -> None:
    """A finished dataset whose train split holds `prompts` (default: numbered) and `labels`."""
    prompts = prompts or [f"{dataset_id} prompt {i}" for i in range(len(labels))]
    rows = {"prompt": prompts, "completion": labels}
    store.write_parquet(pa.table(rows), "datasets", dataset_id, "train", "part-0.parquet")
    store.finish({"dataset_id": dataset_id, "sources": []}, "datasets", dataset_id)


def _model(store, name: str, dataset_id: str, tokens: int) -> str:
    """A registered adapter trained on `dataset_id`, whose held-out answers had `tokens`."""
    eval_id = f"eval-{name}"
    outputs = pa.table({"candidate_tokens": [tokens] * 10})
    store.write_parquet(outputs, "evals", eval_id, "outputs", "part-0.parquet")
    store.write_text("{}", "weights", name, "adapter_config.json")
    return registry.register(
        store,
        run_id=f"run-{name}",
        weights_uri=store.path("weights", name),
        kind="adapter",
        dataset_id=dataset_id,
        eval_id=eval_id,
        metrics={},
        gate={"passed": True, "rules": []},
        spec_hash="0" * 64,
        base_model="tiny",
        system_prompt=None,
    )["model_id"]


def test_each_model_has_its_own_reference(store):
    _dataset(store, "ds-a", ["red"] * 9 + ["blue"])
    a = _model(store, "a", "ds-a", 1)
    time.sleep(0.01)  # the newest dataset is the one created last
    _dataset(store, "ds-b", ["blue"] * 8 + ["red"] * 2)
    b = _model(store, "b", "ds-b", 5)
    registry.promote(store, a, reason="test")
    found = references(store, [b, a, "base", UNRECORDED, "model-gone"], production=a)
    assert found[a]["labels"] == ["red"] * 9 + ["blue"] and found[a]["lengths"] == [1] * 10
    assert found[b]["labels"] == ["blue"] * 8 + ["red"] * 2 and found[b]["lengths"] == [5] * 10
    assert found[b]["prompts"][0] == "ds-b prompt 0"
    assert found[a]["label"] == "its own: dataset ds-a, evaluation eval-a"
    assert found["base"]["dataset_id"] == "ds-b" and found["base"]["lengths"] == []
    assert "(the base model has no training set of its own)" in found["base"]["label"]
    assert found[UNRECORDED]["labels"] == found[a]["labels"]
    assert found[UNRECORDED]["label"].startswith("the production model's: dataset ds-a")
    assert (
        found["model-gone"]["prompts"] == []
        and "not in the registry" in (found["model-gone"]["label"])
    )


def test_sample_files_from_before_the_model_was_recorded_still_load(store):
    old = {k: v for k, v in _row(0).items() if k != "model"} | {"time": utc_stamp()}
    day = time.strftime("%Y-%m-%d", time.gmtime())
    store.write_parquet(
        pa.Table.from_pylist([old]), "monitor", "samples", f"date={day}", "a.parquet"
    )
    nulls = {**_row(2), "model": None}  # and no split: both written as nulls
    asyncio.run(_traffic(store, [{**_row(1), "model": "base", "split": True}, nulls]))
    samples, unreadable = load_samples(store, time.time() - 3600)
    assert unreadable == []
    assert sorted(zip(samples["model"], samples["split"], strict=True)) == [
        ("base", True),
        (UNRECORDED, False),
        (UNRECORDED, False),
    ]


def test_retrain_alerts_count_on_production_traffic_only(store, tmp_path):
    """The production model's alerts, an earlier production model's (its traffic in the
    window was production's) and unrecorded samples' start a retrain; a canary's does not."""
    _dataset(store, "ds-a", ["red"])
    earlier, production = _model(store, "old", "ds-a", 1), _model(store, "a", "ds-a", 1)
    canary = _model(store, "b", "ds-a", 1)
    registry.promote(store, earlier, reason="test")
    registry.promote(store, production, reason="test")
    routing.canary(store, canary, percent=10, reason="test")
    spec = _spec(tmp_path, retrain={"on_alerts": ["any"]})
    now = time.time()

    def alert(model):
        return [{"check": "input_drift_psi", "alert": True, "model": model}]

    assert retrain_reason(spec, store, alert(canary), now) is None
    assert retrain_reason(spec, store, alert("base"), now) is None
    assert retrain_reason(spec, store, alert(production), now) == "alert: input_drift_psi"
    assert retrain_reason(spec, store, alert(UNRECORDED), now) == "alert: input_drift_psi"
    assert retrain_reason(spec, store, alert(earlier), now) == "alert: input_drift_psi"


def test_models_without_samples_are_listed_and_corrections_go_to_their_model(store, tmp_path):
    """The production model is reported though nothing sampled it; a correction counts for
    the model that gave the corrected answer, or `unrecorded` when only `production` is
    known of it."""
    _dataset(store, "ds-a", ["red"])
    production = _model(store, "a", "ds-a", 1)
    registry.promote(store, production, reason="test")
    asyncio.run(_traffic(store, _answers("model-x", ["red", "blue"])))
    for request_id, model, correction in (
        ("model-x-0", None, "red"),  # sampled: its model is the sample's
        ("model-x-1", None, "red"),
        ("gone", "production", "blue"),  # the alias: which arm answered is not known
    ):
        row = {"request_id": request_id, "model": model, "flag": False, "rating": None}
        feedback.store_feedback(store, {**row, "correction": correction, "output": "red"})
    ref = monitor(_spec(tmp_path), store, Progress())
    by_model = {m["model"]: m for m in ref.models}
    assert by_model[production] == {
        "model": production,
        "role": "production",
        "samples": 0,
        "split_samples": 0,
        "enough_samples": False,
        "reference": "its own: dataset ds-a, evaluation eval-a",
    }
    agreement = {k["model"]: k for k in ref.checks if k["check"] == "correction_agreement"}
    assert (agreement["model-x"]["value"], agreement["model-x"]["n"]) == (1.0, 2)
    assert (agreement[UNRECORDED]["value"], agreement[UNRECORDED]["n"]) == (0.0, 1)
    assert production not in agreement
