"""Automatic canary decisions without Ray: the replica's online counts written as a replica
writes them, judged by `ftray.rollout` and carried out as registry events."""

from __future__ import annotations

import pytest

from ftray import registry, routing
from ftray.cli import main
from ftray.rollout import _one_sided_p, _quantile, judge, online_counts, watch
from ftray.serve.online import OnlineCounts
from ftray.spec.serve import RolloutSpec
from tests.unit.test_registry import _register
from tests.unit.test_routing import job  # noqa: F401  # the fixture

RULES = RolloutSpec(min_requests=40, min_ratings=5).model_dump()


@pytest.fixture
def canary(job, tmp_path):  # noqa: F811
    store, args = job
    production, candidate = (_register(store, tmp_path, name) for name in "ab")
    registry.promote(store, production, reason="test")
    routing.canary(store, candidate, percent=50, reason="test", auto=RULES)
    return store, args, production, candidate


def _traffic(store, model: str, n: int, *, errors: int = 0, seconds: float = 0.02, ratings=()):
    """`n` requests of `model` chosen by the split, `errors` of them 5xx, as one replica."""
    counts = OnlineCounts(store)
    for i in range(n):
        if i < errors:
            counts.failed(model, True, 500)
        else:
            counts.answered(model, True, seconds)
    counts.failed(model, True, 400)  # the request's fault: never held against the model
    counts.answered(model, False, 30.0)  # not routed by the split: not in the comparison
    for rating in ratings:
        counts.feedback(model, True, rating, False, False)
    counts.write()


def test_a_canary_waits_for_its_horizon_then_is_promoted(canary):
    store, _, production, candidate = canary
    _traffic(store, production, 30)
    _traffic(store, candidate, 30)
    _, verdict, decided = watch(store, RULES)
    assert verdict.decision == "wait" and decided is None
    assert verdict.reasons[0] == "30 and 30 of 40 requests per arm"
    _traffic(store, production, 15, seconds=0.03)  # a second replica: the counts add up
    _traffic(store, candidate, 15, seconds=0.03)
    _, verdict, decided = watch(store, RULES)
    assert verdict.decision == "promote" and verdict.arms[candidate]["seen"] == 45
    assert decided["action"] == "promote" and decided["reason"].startswith("auto: 45 requests")
    assert registry.production(store) == candidate and routing.split_of(store) is None


def test_errors_roll_a_canary_back_before_its_horizon(canary):
    store, _, production, candidate = canary
    _traffic(store, production, 25, errors=0)
    _traffic(store, candidate, 25, errors=6)
    _, verdict, decided = watch(store, RULES)
    assert verdict.decision == "rollback", verdict
    assert decided["action"] == "end_split" and "5xx rate 0.240" in decided["reason"]
    assert decided["reason"].startswith("rolled back: auto:")
    assert registry.production(store) == production and routing.split_of(store) is None
    events = registry.history(store)
    assert {routing.resolve(events, f"u{i}")[0] for i in range(50)} == {production}


def test_a_few_errors_alike_in_both_arms_roll_nothing_back(canary):
    store, _, production, candidate = canary
    _traffic(store, production, 25, errors=1)
    _traffic(store, candidate, 25, errors=2)
    assert watch(store, RULES)[1].decision == "wait"  # +0.04 but p ≈ 0.28


def test_slow_answers_or_bad_ratings_roll_a_canary_back(job, tmp_path):  # noqa: F811
    store, _ = job
    production, slow, disliked = (_register(store, tmp_path, name) for name in "abc")
    registry.promote(store, production, reason="test")
    routing.canary(store, slow, percent=50, reason="test", auto=RULES)
    _traffic(store, production, 40, seconds=0.2, ratings=[4] * 5)
    _traffic(store, slow, 40, seconds=0.9)
    _, verdict, decided = watch(store, RULES)
    assert verdict.decision == "rollback" and "p95 latency" in decided["reason"], verdict
    routing.canary(store, disliked, percent=50, reason="test", auto=RULES)
    _traffic(store, disliked, 10, ratings=[3] * 5)
    _, verdict, _ = watch(store, RULES)
    assert verdict.reasons == ["mean rating 3.00 vs 4.00 (drop 1.00 > 0.25)"], verdict


def test_a_monitor_alert_on_the_canary_rolls_it_back(canary):
    store, _, production, candidate = canary
    split = routing.split_of(store)
    run = {"time": split["at"], "checks": []}
    run["checks"] = [{"model": production, "check": "input_drift_psi", "alert": True}]
    store.write_json(run, "monitor", "latest.json")
    assert watch(store, RULES, act=False)[1].decision == "wait", "production's alert: no"
    run["checks"].append({"model": candidate, "check": "schema_failure_rate", "alert": True})
    store.write_json(run, "monitor", "latest.json")
    decided = watch(store, RULES)[2]
    assert "monitor alerted on the canary: schema_failure_rate" in decided["reason"]


def test_a_canary_without_auto_is_judged_not_acted_on(job, tmp_path, capsys):  # noqa: F811
    store, args = job
    production, candidate = (_register(store, tmp_path, name) for name in "ab")
    assert main(["models", "promote", *args, production]) == 0
    assert main(["models", "canary", *args, candidate, "--percent", "50"]) == 0
    _traffic(store, production, 40)
    _traffic(store, candidate, 40, errors=20)
    capsys.readouterr()
    assert main(["models", "watch", *args]) == 0
    assert capsys.readouterr().out.startswith("rollback: 5xx rate 0.500")
    assert routing.split_of(store)["model_id"] == candidate, "only advice"
    assert main(["models", "end-split", *args]) == 0
    # the same arms again within the minute: the counts so far are this canary's too (the
    # counts are per minute)
    assert main(["models", "canary", *args, candidate, "--percent", "50", "--auto"]) == 0
    assert "automatic" in capsys.readouterr().out
    assert routing.split_of(store)["rules"] == RolloutSpec().model_dump()
    assert main(["models", "watch", *args]) == 0
    assert "end_split" in capsys.readouterr().out.splitlines()[-1]
    assert main(["models", "watch", *args]) == 0
    assert capsys.readouterr().out == "no canary or experiment is active\n"


def test_the_figures_by_hand(canary):
    store, _, production, _ = canary
    # 10 answers at 0.03 s (bucket 0.01-0.05), 10 at 0.2 s (0.1-0.25): p95 = rank 19 of 20,
    # the 9th of 10 in (0.1, 0.25]
    histogram = [0, 10, 0, 10] + [0] * 8
    assert _quantile(histogram, 0.95) == pytest.approx(0.1 + 0.15 * 9 / 10)
    assert _quantile([0] * 12, 0.95) == 0.0 and _quantile([0] * 11 + [3], 0.5) == 60.0
    assert _one_sided_p(6, 25, 0, 25) == pytest.approx(0.0052, abs=1e-3)
    assert _one_sided_p(0, 25, 6, 25) > 0.99 and _one_sided_p(0, 5, 0, 5) == 1.0
    _traffic(store, production, 3)
    counts = online_counts(store, "2000-01-01T00:00")
    assert counts[(production, True)]["requests"] == 3
    assert counts[(production, True)]["client_errors"] == 1
    assert counts[(production, False)]["requests"] == 1
    assert online_counts(store, "2999-01-01T00:00") == {}
    split = routing.split_of(store)
    assert judge(split, {}, [], RULES).decision == "wait"


def test_a_replica_rewrites_its_counts_only_when_they_change(tmp_path, monkeypatch):
    from ftray.store import Store

    store = Store(str(tmp_path), "proj")
    writes = []
    real = store.write_json
    monkeypatch.setattr(store, "write_json", lambda *a: (writes.append(a[0]), real(*a)))
    counts = OnlineCounts(store)
    counts.write()  # nothing counted: nothing written
    counts.answered("m", True, 0.1)
    counts.write()
    counts.write()  # unchanged
    counts.answered("m", True, 0.1)
    counts.write()
    assert [table["rows"][0]["requests"] for table in writes] == [1, 2]
