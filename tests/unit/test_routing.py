"""Canaries and experiments without Ray: the sticky hash assignment, the registry events that
start, change and end a split, their refusals, and the `ftray models` verbs."""

from __future__ import annotations

import pytest

from ftray import registry, routing
from ftray.cli import main
from ftray.errors import UserError
from ftray.specload import load_spec
from ftray.store import Store
from tests.unit.test_registry import _register


@pytest.fixture
def job(tmp_path):
    overrides = [f"storage={tmp_path / 'store'}"]
    spec = load_spec("jobs/tiny.yaml", overrides)
    return Store(spec.storage, spec.project), ["jobs/tiny.yaml", "--set", *overrides]


def _canary_users(events: list[dict], users: list[str], candidate: str) -> set[str]:
    arms = {user: routing.resolve(events, user) for user in users}
    assert all(split for _, split in arms.values())
    return {user for user, (model, _) in arms.items() if model == candidate}


def test_a_canary_takes_its_share_of_users_and_keeps_them(job, tmp_path):
    store, _ = job
    production, candidate = (_register(store, tmp_path, name) for name in "ab")
    registry.promote(store, production, reason="test")
    assert routing.resolve(registry.history(store), "someone") == (production, False)
    routing.canary(store, candidate, percent=20, reason="test")
    users = [f"user-{i}" for i in range(1000)]
    at_20 = _canary_users(registry.history(store), users, candidate)
    assert 170 <= len(at_20) <= 230, len(at_20)  # 20% ± 3 points
    again = _canary_users(registry.history(store), users, candidate)
    assert again == at_20, "each user keeps the arm it was given"
    # a lower and a higher percent: the canary's users at 10% are all still in it at 20%,
    # and those at 20% at 50%
    at_10 = {u for u in users if routing.bucket(f"canary:{production}/{candidate}", u) < 10}
    routing.canary(store, candidate, percent=50, reason="growing")
    at_50 = _canary_users(registry.history(store), users, candidate)
    assert at_10 < at_20 < at_50 and 450 <= len(at_50) <= 550, (len(at_10), len(at_50))
    # no user key: a random arm per request, in about the same shares
    events = registry.history(store)
    anonymous = [routing.resolve(events, None)[0] for _ in range(400)]
    assert 140 <= anonymous.count(candidate) <= 260


def test_each_split_draws_its_own_users(job, tmp_path):
    """The hash is salted with the arms: a new candidate's canary users are not the same
    unlucky 10% every time."""
    users = [f"user-{i}" for i in range(1000)]
    first = {u for u in users if routing.bucket("canary:model-a/model-b", u) < 10}
    second = {u for u in users if routing.bucket("canary:model-a/model-c", u) < 10}
    assert len(first & second) < 30, len(first & second)  # about 10% of 10% by chance


def test_promotion_rollback_and_end_split_end_a_canary(job, tmp_path):
    store, _ = job
    a, b, c = (_register(store, tmp_path, name) for name in "abc")
    registry.promote(store, a, reason="test")
    routing.canary(store, b, percent=10, reason="test")
    stages = {card["model_id"]: card["stage"] for card in registry.list_models(store)}
    assert stages == {a: "production", b: "canary", c: "candidate"}
    assert not registry.was_decided(store, b), "a canary is no decision on the model"
    # rollback ends the canary and keeps production
    event = registry.rollback(store, reason="errors up")
    assert (event["action"], event["model_id"], event["reason"]) == (
        "end_split",
        b,
        "rolled back: errors up",
    )
    assert event["ended_split"] == {"action": "canary", "model_id": b, "control": a, "percent": 10}
    assert registry.production(store) == a and routing.split_of(store) is None
    assert registry.get_model(store, b)["stage"] == "candidate"
    # promoting the canary's model ends it and makes it production; the event says so
    routing.canary(store, b, percent=10, reason="again")
    event = registry.promote(store, b, reason="canary looked good")
    assert event["ended_split"]["model_id"] == b and event["previous"] == a
    assert registry.production(store) == b and routing.split_of(store) is None
    assert routing.resolve(registry.history(store), "user-1") == (b, False)
    # end_split: production's traffic all back on production
    routing.canary(store, c, percent=5, reason="test")
    with pytest.raises(UserError, match="roll it back first"):
        registry.rollback(store, to=a, reason="too far")
    event = routing.end_split(store, reason="enough data")
    assert (event["action"], event["model_id"], event["ended_split"]["percent"]) == (
        "end_split",
        c,
        5,
    )
    events = registry.history(store)
    assert {routing.resolve(events, f"u{i}")[0] for i in range(50)} == {b}
    with pytest.raises(UserError, match="no canary or experiment is active"):
        routing.end_split(store, reason="again")
    actions = [e["action"] for e in registry.history(store)]
    assert actions == [
        "promote",
        "canary",
        "end_split",
        "canary",
        "promote",
        "canary",
        "end_split",
    ]


def test_the_gate_rejecting_an_arm_ends_its_split(job, tmp_path):
    """A gate re-run that turns the canary's model down takes it out of production traffic."""
    store, _ = job
    a, b, c = (_register(store, tmp_path, name) for name in "abc")
    registry.promote(store, a, reason="test")
    routing.canary(store, b, percent=30, reason="test")
    registry.reject(store, c, reason="another model")  # not an arm: the canary goes on
    assert routing.split_of(store)["model_id"] == b
    registry.reject(store, b, reason="macro_f1 below the incumbent")
    assert routing.split_of(store) is None
    events = registry.history(store)
    assert {routing.resolve(events, f"u{i}")[0] for i in range(50)} == {a}


def test_an_experiment_splits_production_between_two_models(job, tmp_path):
    store, _ = job
    a, b, c = (_register(store, tmp_path, name) for name in "abc")
    routing.experiment(store, a, b, reason="no production needed")
    users, events = [f"user-{i}" for i in range(1000)], registry.history(store)
    answers = [routing.resolve(events, u) for u in users]
    assert {split for _, split in answers} == {True}
    assert 450 <= [m for m, _ in answers].count(b) <= 550
    routing.experiment(store, a, b, percent=30, reason="less B")
    events = registry.history(store)
    share = [routing.resolve(events, u)[0] for u in users].count(b)
    assert 270 <= share <= 330, share
    stages = {card["model_id"]: card["stage"] for card in registry.list_models(store)}
    assert stages == {a: "experiment", b: "experiment", c: "candidate"}
    registry.promote(store, a, reason="A won")
    assert routing.split_of(store) is None and registry.production(store) == a


def test_refusals(job, tmp_path):
    store, _ = job
    a, b, c = (_register(store, tmp_path, name) for name in "abc")
    bad = _register(store, tmp_path, "bad", passed=False)
    waiting = _register(store, tmp_path, "waiting", passed=False, pending=True)
    with pytest.raises(UserError, match="no model is in production"):
        routing.canary(store, b, percent=10, reason="x")
    registry.promote(store, a, reason="test")
    for percent in (0, 100, 150, -5):
        with pytest.raises(UserError, match=f"--percent {percent:g} is out of range"):
            routing.canary(store, b, percent=percent, reason="x")
    with pytest.raises(UserError, match="--split 100 is out of range"):
        routing.experiment(store, a, b, percent=100, reason="x")
    with pytest.raises(UserError, match="no model 'model-000000000000'"):
        routing.canary(store, "model-000000000000", percent=10, reason="x")
    with pytest.raises(UserError, match=r"'\.\./escape' is not a valid id"):
        routing.canary(store, "../escape", percent=10, reason="x")
    with pytest.raises(UserError, match=f"the gate rejected {bad}"):
        routing.canary(store, bad, percent=10, reason="x")
    with pytest.raises(UserError, match="awaits human review"):
        routing.experiment(store, a, waiting, reason="x")
    with pytest.raises(UserError, match="already the production model"):
        routing.canary(store, a, percent=10, reason="x")
    with pytest.raises(UserError, match="two different models"):
        routing.experiment(store, b, b, reason="x")
    routing.canary(store, b, percent=10, reason="x")
    with pytest.raises(UserError, match="already has 10%"):
        routing.canary(store, b, percent=10, reason="x")
    with pytest.raises(UserError, match=f"a canary of {b} is active .10%.: end it first"):
        routing.canary(store, c, percent=10, reason="x")
    with pytest.raises(UserError, match="end it first"):
        routing.experiment(store, a, c, reason="x")
    assert [e["action"] for e in registry.history(store)] == ["promote", "canary"]


def test_the_models_verbs(job, tmp_path, capsys):
    store, args = job
    a, b = (_register(store, tmp_path, name) for name in "ab")
    assert main(["models", "canary", *args, b, "--percent", "20"]) == 2
    assert "no model is in production" in capsys.readouterr().err
    assert main(["models", "promote", *args, a]) == 0
    assert main(["models", "canary", *args, b, "--percent", "120"]) == 2
    assert "--percent 120 is out of range" in capsys.readouterr().err
    assert main(["models", "canary", *args, b, "--percent", "20"]) == 0
    out = capsys.readouterr().out
    assert f"canary: {b} (canary) 20%, {a} (production) 80%" in out, out
    assert main(["models", "list", *args]) == 0
    listed = capsys.readouterr().out
    assert f"canary: {b} (canary) 20%" in listed and f"{b}  canary" in listed, listed
    assert main(["models", "show", *args, b]) == 0
    assert '"percent": 20' in capsys.readouterr().out
    assert main(["models", "end-split", *args, "--reason", "done"]) == 0
    assert f"ended the canary of {b}; production: {a}" in capsys.readouterr().out
    assert main(["models", "experiment", *args, a, b, "--split", "30"]) == 0
    assert f"experiment: {b} (B) 30%, {a} (A) 70%" in capsys.readouterr().out
    assert main(["models", "rollback", *args]) == 0
    assert f"rolled back the experiment of {b}; production: {a}" in capsys.readouterr().out
    assert main(["models", "history", *args]) == 0
    history = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in history] == [
        "promote",
        "canary",
        "end_split",
        "experiment",
        "end_split",
    ]
    assert f"canary     {b} 20% (vs {a})" in history[1], history
    assert history[-1].endswith("rolled back: rolled back by hand"), history


def test_a_split_answer_is_counted_and_sampled_with_its_arm(tmp_path):
    """The replica's record of an answer: the model that answered and whether a split chose
    it, in the sampled row (what `ftray monitor` reads) and the metrics' tags (Ray checks
    every tag key is given)."""
    import asyncio
    import json

    import pyarrow.parquet as pq
    from fastapi import HTTPException

    from ftray.monitor.feedback import all_feedback
    from ftray.serve.exchange import Exchange, ExchangeLog
    from ftray.serve.guard import FeedbackRequest
    from ftray.serve.metrics import ServeMetrics
    from ftray.spec import MonitorSpec

    store = Store(str(tmp_path / "store"), "proj")
    metrics = ServeMetrics()
    monitor = MonitorSpec(sample_rate=1.0, flush_rows=100)
    answer = {"text": "ok", "tokens": 1, "finish_reason": "stop"}

    async def traffic():
        log = ExchangeLog(store, monitor, metrics)
        log.answered(Exchange("model-b", True, "hi", 3, 0.0, split=True), "r1", answer)
        log.answered(Exchange("model-a", True, "hi", 3, 0.0), "r2", answer)
        # feedback naming `production`: stored with the arm that answered
        await log.feedback(FeedbackRequest(request_id="r1", model="production", rating=1))
        log.failed("model-b", True, HTTPException(400, "too long"))
        log.failed("model-b", True, RuntimeError("generation failed"))
        await log.drain()

    asyncio.run(traffic())
    (feedback,) = all_feedback(store)
    assert (feedback["request_id"], feedback["model"]) == ("r1", "model-b")
    rows = pq.read_table(store.path("monitor", "samples")).to_pylist()
    assert sorted((r["request_id"], r["model"], r["split"]) for r in rows) == [
        ("r1", "model-b", True),
        ("r2", "model-a", False),
    ]
    # the monitor's latest checks, per model (and a pooled one from an older run)
    metrics.checks(
        [
            {"model": "model-b", "check": "input_drift_psi", "value": 0.4, "alert": True},
            {"check": "input_drift_psi", "value": 0.1, "alert": False},
        ]
    )
    # the online counts a rollout decides on: per model and split, from the same calls
    (written,) = store.fs.glob(store.path("monitor", "online") + "/*.json")
    with store.fs.open(written) as handle:
        rows = {(r["model"], r["split"]): r for r in json.load(handle)["rows"]}
    assert set(rows) == {("model-b", True), ("model-a", False)}
    b = rows[("model-b", True)]
    assert (b["requests"], b["errors"], b["client_errors"], b["ratings"], b["rating_sum"]) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert sum(b["latency"]) == 1 and rows[("model-a", False)]["errors"] == 0
