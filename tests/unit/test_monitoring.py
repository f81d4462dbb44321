"""Monitoring without Ray: drift statistics against hand-computed values, the sampler's
writes (and that a storage failure never reaches a request), feedback decisions, and the
corrections file `ftray retrain` adds to the next dataset version."""

from __future__ import annotations

import asyncio
import json
import math
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from ftray.errors import UserError
from ftray.monitor import checks as c
from ftray.monitor import feedback
from ftray.monitor.retrain import retrain_spec
from ftray.monitor.sampler import Sampler
from ftray.progress import Progress
from ftray.spec import JobSpec
from ftray.spec.monitor import CHECKS
from ftray.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), "proj")


def test_categorical_psi_by_hand():
    # reference 50/50, sample 80/20: (0.8-0.5)ln(0.8/0.5) + (0.2-0.5)ln(0.2/0.5)
    expected = 0.3 * math.log(1.6) + (-0.3) * math.log(0.4)
    assert c.categorical_psi(["a", "b"] * 50, ["a"] * 80 + ["b"] * 20) == pytest.approx(expected)
    assert c.categorical_psi(["a", "b"] * 50, ["b", "a"] * 10) == pytest.approx(0.0)


def test_numeric_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5000)
    assert c.psi(reference, rng.normal(0, 1, 2000)) < 0.02
    assert c.psi(reference, rng.normal(1.5, 1, 2000)) > 1.0
    # quantile bins: a sample entirely above the reference puts all mass in the last bin
    assert c.psi([1, 2, 3, 4], [10, 11]) == pytest.approx(
        sum((s - r) * math.log(s / r) for r, s in ((0.25, 1e-4),) * 3 + ((0.25, 1.0),)), rel=1e-6
    )


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("", True),
        ("   ", True),
        ("I'm sorry, I can't help with that.", True),
        ("As an AI, I cannot", True),
        ("card_arrival", False),
        ("Sorry to hear! Your card…", True),
        ("Your card is sorry-looking", False),
    ],
)
def test_empty_or_refusal(output, expected):
    assert c.is_empty_or_refusal(output) is expected


def test_result_alerts_only_with_enough_samples():
    assert c.result("x", 0.5, 0.2, "max", 100, 50, "d")["alert"]
    few = c.result("x", 0.5, 0.2, "max", 10, 50, "d")
    assert not few["alert"] and "10 observed; 50 needed to alert" in few["detail"]
    assert c.result("y", 0.9, 0.95, "min", 100, 50, "d")["alert"]


def test_label_shift_and_correction_agreement():
    value, shares = c.label_shift(
        ["red", "Red.", "green!?", "blue"], ["red", "blue"], ["red", "blue"]
    )
    assert shares == {"red": 0.5, "(none)": 0.25, "blue": 0.25}
    assert value > 0
    agreement, n = c.correction_agreement(
        [
            {"output": "red", "correction": "Red"},
            {"output": "red", "correction": "blue"},
            {"output": "x", "correction": None},
        ]
    )
    assert (agreement, n) == (0.5, 2)


def _sampler(store, **settings):
    base = {"sample_rate": 1.0, "redact_pii": True, "flush_rows": 3, "flush_interval_s": 60}
    return Sampler(store, {**base, **settings})


def _row(i):
    return {
        "request_id": f"r{i}",
        "time": "2026-11-29T10:00:00Z",
        "model": "base",
        "endpoint": "chat",
        "prompt": f"mail me at user{i}@example.com",
        "output": "ok",
        "prompt_tokens": 5,
        "completion_tokens": 1,
        "latency_s": 0.1,
        "finish_reason": "stop",
    }


def test_sampler_writes_redacted_date_partitioned_parquet(store):
    async def traffic():
        sampler = _sampler(store)
        for i in range(4):
            sampler.record(_row(i))
        assert sampler._flushing  # the write at 3 rows is scheduled; record() did not wait
        await sampler.drain()
        return sampler

    sampler = asyncio.run(traffic())
    folder = store.path("monitor", "samples")
    rows = pq.read_table(folder).to_pylist()
    assert len(rows) == 4 and sampler.stats()["written"] == 4
    assert all("[EMAIL]" in r["prompt"] and "@" not in r["prompt"] for r in rows)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert all(f"/date={today}/" in p for p in store.fs.find(folder))
    assert sampler.recent["r3"]["prompt"] == "mail me at [EMAIL]"


def test_a_storage_failure_never_reaches_the_request(store, monkeypatch):
    async def traffic():
        sampler = _sampler(store, flush_rows=100)
        monkeypatch.setattr(sampler, "_write", lambda rows: (_ for _ in ()).throw(OSError("down")))
        sampler.record(_row(1))
        sampler.record({"broken": True})  # a malformed sample is dropped, not raised
        await sampler.flush()
        return sampler

    sampler = asyncio.run(traffic())
    assert sampler.stats() == {"rate": 1.0, "buffered": 0, "written": 0, "failed": 1}


def test_feedback_decisions_and_the_corrections_file(store, tmp_path):
    first = feedback.store_feedback(
        store,
        {
            "request_id": "r1",
            "flag": False,
            "rating": 2,
            "correction": "blue",
            "prompt": "sky?",
            "output": "red",
        },
    )
    flagged = feedback.store_feedback(
        store,
        {
            "request_id": "r2",
            "flag": True,
            "rating": None,
            "correction": None,
            "prompt": "sea?",
            "output": "red",
        },
    )
    feedback.store_feedback(
        store,
        {
            "request_id": "r3",
            "flag": False,
            "rating": 5,
            "correction": None,
            "prompt": "x",
            "output": "y",
        },
    )
    assert [f["feedback_id"] for f in feedback.pending(store)] == [
        first["feedback_id"],
        flagged["feedback_id"],
    ]
    with pytest.raises(UserError, match="no correction to accept"):
        feedback.decide(store, flagged["feedback_id"], "accept")
    feedback.decide(store, first["feedback_id"], "accept", by="ann")
    feedback.decide(store, flagged["feedback_id"], "accept", by="bob", output="blue")
    assert feedback.pending(store) == []
    assert [(r["prompt"], r["completion"]) for r in feedback.accepted_corrections(store)] == [
        ("sky?", "blue"),
        ("sea?", "blue"),
    ]
    spec = JobSpec.model_validate(
        {
            "project": "proj",
            "storage": str(tmp_path / "store"),
            "model": {"base": "tiny"},
            "data": {
                "sources": [{"path": "data.csv"}],
                "eval_sources": [{"path": "test.csv", "precedence": 3}],
                "prompt_field": "text",
                "completion_field": "color",
                "labels": ["red", "blue"],
            },
        }
    )
    again = retrain_spec(spec, store, Progress())
    assert again.data.sources[0].path == "data.csv"
    path = again.data.sources[1].path
    assert again.data.sources[1].precedence == 4, "corrections win over every other source"
    lines = [json.loads(line) for line in store.fs.open(path).read().decode().splitlines()]
    assert lines == [
        {"text": "sky?", "color": "blue", "feedback_id": first["feedback_id"]},
        {"text": "sea?", "color": "blue", "feedback_id": flagged["feedback_id"]},
    ]
    assert retrain_spec(spec, store, Progress()).data.sources[1].path == path  # by content
    # a preference job gets pairs: the correction chosen over the answer that was served
    data = {
        **spec.data.model_dump(),
        "preference": {"chosen_field": "good", "rejected_field": "bad"},
    }
    pairs = spec.model_copy(
        update={
            "data": spec.data.model_validate(data),
            "train": spec.train.model_validate({"method": "dpo"}),
        }
    )
    path = retrain_spec(pairs, store, Progress()).data.sources[1].path
    lines = [json.loads(line) for line in store.fs.open(path).read().decode().splitlines()]
    assert [(r["text"], r["good"], r["bad"]) for r in lines] == [
        ("sky?", "blue", "red"),
        ("sea?", "blue", "red"),
    ]


def test_retrain_without_corrections_says_how_to_get_them(store, tmp_path):
    spec = JobSpec.model_validate(
        {
            "project": "proj",
            "storage": str(tmp_path / "store"),
            "model": {"base": "tiny"},
            "data": {"sources": [{"path": "data.csv"}]},
        }
    )
    with pytest.raises(UserError, match="ftray feedback accept"):
        retrain_spec(spec, store, Progress())


def _retrain_spec(tmp_path, **retrain):
    return JobSpec.model_validate(
        {
            "project": "proj",
            "storage": str(tmp_path / "store"),
            "model": {"base": "tiny"},
            "data": {"sources": [{"path": "data.csv"}]},
            "monitor": {"retrain": retrain},
        }
    )


def _correction(store, n):
    row = {"request_id": f"r{n}", "flag": False, "rating": 1, "correction": "blue"}
    fed = feedback.store_feedback(store, {**row, "prompt": f"sky {n}?", "output": "red"})
    feedback.decide(store, fed["feedback_id"], "accept")


def test_retrain_triggers_alerts_corrections_and_schedule(store, tmp_path):
    from ftray.monitor.trigger import record_retrain, retrain_reason

    # no production model: alerts count on samples that name no model (checked as its)
    drift = [{"check": "input_drift_psi", "alert": True, "model": "unrecorded"}]
    now = time.time()
    assert retrain_reason(_retrain_spec(tmp_path), store, drift, now) is None, "off by default"
    on_drift = _retrain_spec(tmp_path, on_alerts=["input_drift_psi"])
    assert retrain_reason(on_drift, store, drift, now) == "alert: input_drift_psi"
    on_shift = _retrain_spec(tmp_path, on_alerts=["label_shift_psi"])
    assert retrain_reason(on_shift, store, drift, now) is None
    assert retrain_reason(_retrain_spec(tmp_path, on_alerts=["any"]), store, drift, now)

    two = _retrain_spec(tmp_path, min_corrections=2)
    _correction(store, 1)
    assert retrain_reason(two, store, [], now) is None
    _correction(store, 2)
    assert retrain_reason(two, store, [], now).startswith("2 accepted correction(s)")
    retrained = retrain_spec(two, store, Progress())  # writes them into a corrections file
    assert retrain_reason(two, store, [], now), "a retrain stopped before registering: retried"
    _registered_from(store, retrained, "1")
    assert retrain_reason(two, store, [], now) is None, "used corrections count no more"
    _correction(store, 3)
    _correction(store, 4)
    assert retrain_reason(two, store, [], now).startswith("2 accepted")

    daily = _retrain_spec(tmp_path, every_hours=24)
    assert retrain_reason(daily, store, [], now) == "schedule: every 24 h", "none yet"
    record_retrain(store, now - 23 * 3600, "schedule: every 24 h", None)
    assert retrain_reason(daily, store, [], now) is None
    assert retrain_reason(daily, store, [], now + 3600) == "schedule: every 24 h"
    (event,) = store.read_events("monitor", "retrains")
    assert event["reason"] == "schedule: every 24 h" and event["outcome"] is None


def _registered_from(store, spec, name: str) -> str:
    """What a finished retrain leaves: its dataset (listing the corrections file among its
    sources) and a model registered from it."""
    from ftray import registry

    dataset_id = f"ds-{name}"
    sources = [{"path": source.path} for source in spec.data.sources]
    store.finish({"dataset_id": dataset_id, "sources": sources}, "datasets", dataset_id)
    weights = store.path("weights", name)
    store.write_text("{}", "weights", name, "adapter_config.json")
    return registry.register(
        store,
        run_id=f"run-{name}",
        weights_uri=weights,
        kind="adapter",
        dataset_id=dataset_id,
        eval_id=f"eval-{name}",
        metrics={},
        gate={"passed": True, "rules": []},
        spec_hash="0" * 64,
        base_model="tiny",
        system_prompt=None,
    )["model_id"]


def test_a_second_retrain_by_hand_on_the_same_corrections_is_refused(store, tmp_path):
    """Once a model is trained on every accepted correction, `ftray retrain` would rebuild
    the same dataset and run and, after its promotion, judge the production model against
    itself: refused, as `ftray monitor` skips it; a new correction makes it due again."""
    from ftray import registry

    spec = _retrain_spec(tmp_path)
    _correction(store, 1)
    first = retrain_spec(spec, store, Progress())
    assert retrain_spec(spec, store, Progress()) == first, "not yet trained on: retried"
    model_id = _registered_from(store, first, "1")
    registry.promote(store, model_id, reason="test")
    with pytest.raises(UserError, match=f"nothing new to retrain on: all 1 .*{model_id}"):
        retrain_spec(spec, store, Progress())
    _correction(store, 2)
    assert len(retrain_spec(spec, store, Progress()).data.sources) == 2


def test_retrain_triggers_refuse_unknown_checks(tmp_path):
    with pytest.raises(ValueError, match="input_drift_psi"):
        _retrain_spec(tmp_path, on_alerts=["input_drift"])


def test_monitor_skips_counts_and_reports_unreadable_sample_files(store, tmp_path, capsys):
    from ftray.monitor.samples import load_samples
    from ftray.monitor.stage import monitor

    asyncio.run(_write_samples(store, 4))
    day = store.list_dirs("monitor", "samples")[0]
    store.write_bytes(b"PAR1 cut off", "monitor", "samples", day, "truncated.parquet")
    store.write_bytes(b"not parquet at all", "monitor", "samples", day, "foreign.parquet")
    samples, unreadable = load_samples(store, time.time() - 3600)
    assert len(samples) == 4
    assert sorted(path.rsplit("/", 1)[-1] for path, _ in unreadable) == [
        "foreign.parquet",
        "truncated.parquet",
    ]
    spec = JobSpec.model_validate(
        {
            "project": "proj",
            "storage": str(tmp_path / "store"),
            "model": {"base": "tiny"},
            "data": {"sources": [{"path": "data.csv"}]},
        }
    )
    ref = monitor(spec, store, Progress())
    assert ref.checks, "the run went on with the readable samples"
    # monitor.retrain.on_alerts accepts exactly the names the checks report
    assert {check["check"] for check in ref.checks} <= set(CHECKS)
    latest = store.read_json("monitor", "latest.json")
    assert latest["samples"] == 4 and latest["unreadable_sample_files"] == 2
    assert (
        "2 unreadable sample file(s) were skipped"
        in store.fs.cat(store.path("monitor", "report.md")).decode()
    )
    assert "skipped 2 unreadable sample file(s)" in capsys.readouterr().out


async def _write_samples(store, n):
    sampler = _sampler(store)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i in range(n):
        sampler.record({**_row(i), "time": now})
    await sampler.drain()
