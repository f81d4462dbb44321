"""The model registry without Ray: cards, promotion, the gate's veto, rollback."""

from __future__ import annotations

import pytest

from ftray import registry
from ftray.errors import UserError
from ftray.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), "proj")


def _register(store, tmp_path, name: str, passed: bool = True, pending: bool = False) -> str:
    weights = tmp_path / f"weights-{name}"
    weights.mkdir()
    (weights / "adapter_config.json").write_text("{}")
    gate = {
        "passed": passed,
        "rules": [{"rule": "macro_f1 ≥ incumbent + 0", "passed": passed, "detail": "…"}],
    }
    if pending:  # awaiting human review
        gate["pending"] = True
    card = registry.register(
        store,
        run_id=f"run-{name}",
        weights_uri=str(weights),
        kind="adapter",
        dataset_id="ds-1",
        eval_id=f"eval-{name}",
        metrics={"primary_metric": "macro_f1"},
        gate=gate,
        spec_hash="0" * 64,
        base_model="tiny",
        system_prompt=None,
    )
    return card["model_id"]


def test_promote_then_rollback_restores_the_previous_model(store, tmp_path):
    a, b, c = (_register(store, tmp_path, name) for name in "abc")
    assert registry.production(store) is None
    assert registry.get_model(store, a)["stage"] == "candidate"
    for model_id in (a, b, c):
        registry.promote(store, model_id, reason="test")
    assert registry.production(store) == c
    assert registry.rollback(store, reason="bad answers")["model_id"] == b
    assert registry.production(store) == b
    stages = {card["model_id"]: card["stage"] for card in registry.list_models(store)}
    assert stages == {a: "archived", b: "production", c: "archived"}
    registry.rollback(store, reason="again")
    assert registry.production(store) == a
    with pytest.raises(UserError, match="only model ever promoted"):
        registry.rollback(store, reason="nothing left")
    actions = [(e["action"], e["model_id"]) for e in registry.history(store)]
    assert actions == [
        ("promote", a),
        ("promote", b),
        ("promote", c),
        ("rollback", b),
        ("rollback", a),
    ]


def test_rollback_to_an_earlier_production_model(store, tmp_path):
    a, b, c = (_register(store, tmp_path, name) for name in "abc")
    for model_id in (a, b, c):
        registry.promote(store, model_id, reason="test")
    with pytest.raises(UserError, match="was not production before"):
        registry.rollback(store, to=c, reason="c is the current one")
    registry.rollback(store, to=a, reason="skip b too")
    assert registry.production(store) == a


def test_the_gate_vetoes_promotion_unless_forced(store, tmp_path):
    good, bad = _register(store, tmp_path, "good"), _register(store, tmp_path, "bad", False)
    registry.promote(store, good, reason="gate passed")
    registry.reject(store, bad, reason="gate failed: macro_f1")
    assert registry.get_model(store, bad)["stage"] == "rejected"
    assert registry.was_decided(store, bad) and registry.was_decided(store, good)
    with pytest.raises(UserError, match=r"the gate rejected .* \(failed: macro_f1"):
        registry.promote(store, bad, reason="please")
    assert registry.production(store) == good
    registry.promote(store, bad, reason="accepted by a person", force=True)
    assert registry.production(store) == bad
    with pytest.raises(UserError, match="already the production model"):
        registry.promote(store, bad, reason="twice")


def test_cards_link_their_lineage_and_never_change(store, tmp_path):
    model_id = _register(store, tmp_path, "a")
    stored = store.manifest("models", model_id)
    assert "stage" not in stored  # the stage lives in the event log
    assert stored["run_id"] == "run-a" and stored["eval_id"] == "eval-a"
    assert stored["adapter_uri"].endswith(f"models/{model_id}/adapter")
    registry.promote(store, model_id, reason="test")
    assert store.manifest("models", model_id) == stored
    with pytest.raises(UserError, match="registered: "):
        registry.get_model(store, "model-000000000000")


def test_a_promotion_from_a_host_whose_clock_is_behind_still_changes_production(
    store, tmp_path, monkeypatch
):
    import time

    a, b = _register(store, tmp_path, "a"), _register(store, tmp_path, "b")
    registry.promote(store, a, reason="first")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 10)
    monkeypatch.setattr(time, "time_ns", lambda: int((real() - 10) * 1e9))
    monkeypatch.setattr(time, "gmtime", lambda secs=None: time.localtime(0))
    registry.promote(store, b, reason="from a slow clock")
    assert registry.production(store) == b
    assert [e["model_id"] for e in registry.history(store)] == [a, b]


def test_concurrent_promotions_both_land_and_the_second_knows_the_first(store, tmp_path):
    import threading

    models = [_register(store, tmp_path, name) for name in "abcdef"]
    start = threading.Barrier(len(models))
    errors = []

    def promote(model_id):
        start.wait()
        try:
            registry.promote(store, model_id, reason="race")
        except UserError as err:
            errors.append(err)

    threads = [threading.Thread(target=promote, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    events = registry.history(store)
    assert sorted(e["model_id"] for e in events) == sorted(models), "none lost"
    # A total order: each promotion names the one before it as the model it replaced.
    assert [e["previous"] for e in events] == [None] + [e["model_id"] for e in events[:-1]]
    assert registry.production(store) == events[-1]["model_id"]


def test_ids_from_the_command_line_cannot_leave_the_models_folder(store):
    with pytest.raises(UserError, match="is not a valid id"):
        registry.get_model(store, "../../etc")


def test_serving_a_rejected_or_forced_model_warns(store, tmp_path):
    from ftray.serve.stage import rejection_warnings

    good = _register(store, tmp_path, "good")
    bad = _register(store, tmp_path, "bad", passed=False)
    registry.promote(store, good, reason="gate passed")
    registry.reject(store, bad, reason="gate failed")
    assert rejection_warnings(store, "base") == []
    assert rejection_warnings(store, "production") == []
    assert rejection_warnings(store, f"tiny:{good}") == []
    (warning,) = rejection_warnings(store, bad)
    assert "registry rejected it" in warning and "macro_f1 ≥ incumbent + 0" in warning
    registry.promote(store, bad, reason="forced", force=True)
    (warning,) = rejection_warnings(store, "production")
    assert bad in warning and "gate failed" in warning and "rejected it" not in warning
    with pytest.raises(UserError, match="no model"):
        rejection_warnings(store, "model-000000000000")


def _gate(passed: bool, pending: bool = False) -> dict:
    return {
        "passed": passed,
        "pending": pending,
        "rules": [{"rule": "macro_f1 ≥ incumbent + 0", "passed": passed, "detail": "…"}],
    }


def test_apply_verdict_promotes_rejects_or_waits_once(store, tmp_path):
    good, bad, manual, waiting = (
        _register(store, tmp_path, name, passed=name != "bad")
        for name in ("good", "bad", "manual", "waiting")
    )
    apply = registry.apply_verdict
    assert apply(store, good, _gate(True), eval_id="eval-good", auto_promote=True) == "promoted"
    assert apply(store, bad, _gate(False), eval_id="eval-bad", auto_promote=True) == "rejected"
    assert apply(store, manual, _gate(True), eval_id="e", auto_promote=False) == "unchanged"
    pending = _gate(False, pending=True)
    assert apply(store, waiting, pending, eval_id="e", auto_promote=True) == "pending"
    stages = {card["model_id"]: card["stage"] for card in registry.list_models(store)}
    assert stages == {
        good: "production",
        bad: "rejected",
        manual: "candidate",
        waiting: "candidate",
    }
    assert "gate failed: macro_f1" in registry.history(store)[1]["reason"]
    # applied again (a rerun of `ftray eval`): nothing new is recorded
    before = registry.history(store)
    assert apply(store, good, _gate(True), eval_id="eval-good", auto_promote=True) == "unchanged"
    assert apply(store, bad, _gate(False), eval_id="eval-bad", auto_promote=True) == "unchanged"
    assert registry.history(store) == before


def test_apply_verdict_follows_a_changed_gate_up_never_down(store, tmp_path):
    old, new = (_register(store, tmp_path, name, passed=name == "old") for name in ("old", "new"))
    registry.apply_verdict(store, old, _gate(True), eval_id="eval-old", auto_promote=True)
    registry.apply_verdict(store, new, _gate(False), eval_id="eval-new", auto_promote=True)
    # eval.gate changed and was re-applied to both stored evaluations
    for eval_id, passed in (("eval-old", False), ("eval-new", True)):
        store.finish({"eval_id": eval_id, "gate": _gate(passed)}, "evals", eval_id)
    assert (
        registry.apply_verdict(store, old, _gate(False), eval_id="eval-old", auto_promote=True)
        == "rejects_production"
    )
    assert registry.production(store) == old  # taking production down is a person's call
    assert (
        registry.apply_verdict(store, new, _gate(True), eval_id="eval-new", auto_promote=False)
        == "now_passes"
    )
    assert registry.get_model(store, new)["stage"] == "rejected"
    assert (
        registry.apply_verdict(store, new, _gate(True), eval_id="eval-new", auto_promote=True)
        == "promoted"
    )
    assert registry.production(store) == new
    assert registry.history(store)[-1]["reason"] == "gate re-applied to eval-new: passed"
