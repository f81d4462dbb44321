"""The model registry without Ray: cards, promotion, the gate's veto, rollback."""

from __future__ import annotations

import pytest

from ftray import registry
from ftray.errors import UserError
from ftray.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), "proj")


def _register(store, tmp_path, name: str, passed: bool = True) -> str:
    weights = tmp_path / f"weights-{name}"
    weights.mkdir()
    (weights / "adapter_config.json").write_text("{}")
    gate = {
        "passed": passed,
        "rules": [{"rule": "macro_f1 ≥ incumbent + 0", "passed": passed, "detail": "…"}],
    }
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
