"""Shadow traffic without Ray: the registry events that start, change and end a shadow, which
users it mirrors, the replica's record of a pair, the report and the `ftray models` verbs."""

from __future__ import annotations

import asyncio
import json

import pytest

from ftray import registry, routing
from ftray.cli import main
from ftray.errors import UserError
from ftray.serve.shadow import agree, shadow_report
from tests.unit.test_registry import _register
from tests.unit.test_routing import job  # noqa: F401  # the fixture


def _mirrored(store, users: list[str], answered_by: str) -> set[str]:
    events = registry.history(store)
    return {u for u in users if routing.shadow_for(events, u, answered_by)}


def test_a_shadow_mirrors_its_share_of_users_beside_a_canary(job, tmp_path):  # noqa: F811
    store, _ = job
    a, b, c = (_register(store, tmp_path, name) for name in "abc")
    registry.promote(store, a, reason="test")
    routing.shadow(store, c, percent=30, reason="test")
    users = [f"user-{i}" for i in range(1000)]
    at_30 = _mirrored(store, users, a)
    assert 270 <= len(at_30) <= 330, len(at_30)
    assert _mirrored(store, users, a) == at_30, "each user keeps its place"
    assert not _mirrored(store, users, c), "the shadow never mirrors its own answers"
    routing.shadow(store, c, percent=60, reason="more")
    assert at_30 < _mirrored(store, users, a), "a wider shadow keeps the users it had"
    # a canary beside it: production's answers, split or not, are mirrored; stages say so
    routing.canary(store, b, percent=20, reason="test")
    assert _mirrored(store, users, b) and routing.split_of(store)["model_id"] == b
    stages = {card["model_id"]: card["stage"] for card in registry.list_models(store)}
    assert stages == {a: "production", b: "canary", c: "shadow"}
    routing.end_split(store, reason="done")
    assert registry.active_shadow(registry.history(store))["percent"] == 60
    # promoting the shadow's model ends the shadow
    registry.promote(store, c, reason="it agreed")
    assert registry.active_shadow(registry.history(store)) is None
    assert not _mirrored(store, users, c)


def test_shadow_refusals_and_end(job, tmp_path):  # noqa: F811
    store, _ = job
    a, b, c = (_register(store, tmp_path, name) for name in "abc")
    bad = _register(store, tmp_path, "bad", passed=False)
    waiting = _register(store, tmp_path, "waiting", passed=False, pending=True)
    registry.promote(store, a, reason="test")
    registry.reject(store, bad, reason="gate")
    with pytest.raises(UserError, match="--percent 0 is out of range"):
        routing.shadow(store, b, percent=0, reason="x")
    with pytest.raises(UserError, match=f"{a} is the production model"):
        routing.shadow(store, a, percent=10, reason="x")
    with pytest.raises(UserError, match=f"the gate rejected {bad}"):
        routing.shadow(store, bad, percent=10, reason="x")
    with pytest.raises(UserError, match="no model 'model-000000000000'"):
        routing.shadow(store, "model-000000000000", percent=10, reason="x")
    routing.shadow(store, waiting, percent=10, reason="a pending gate may be shadowed")
    with pytest.raises(UserError, match="already mirrors 10%"):
        routing.shadow(store, waiting, percent=10, reason="x")
    with pytest.raises(UserError, match=f"a shadow of {waiting} is active .10%.: end it first"):
        routing.shadow(store, c, percent=10, reason="x")
    event = routing.end_shadow(store, reason="enough")
    assert (event["action"], event["model_id"]) == ("end_shadow", waiting)
    with pytest.raises(UserError, match="no shadow is active"):
        routing.end_shadow(store, reason="again")
    assert routing.shadow_for(registry.history(store), "anyone", a) is None


def test_a_shadow_pair_is_recorded_counted_and_reported(tmp_path):
    """The replica keeps every shadow pair (whatever the sample rate), redacted, beside the
    samples `ftray monitor` reads, and counts it; the report sums the pairs per model."""
    from ftray.monitor.samples import load_samples
    from ftray.serve.exchange import Exchange, ExchangeLog
    from ftray.serve.metrics import ServeMetrics
    from ftray.spec import MonitorSpec
    from ftray.store import Store

    store = Store(str(tmp_path / "store"), "proj")
    monitor = MonitorSpec(sample_rate=0.0, flush_rows=100)
    production = {"text": "card_arrival", "tokens": 2, "finish_reason": "stop"}
    answers = ["Card_Arrival ", "card_arrival", "lost_card", "mail me at a@b.co"]

    async def traffic():
        log = ExchangeLog(store, monitor, ServeMetrics())
        for i, text in enumerate(answers):
            shadow = {"text": text, "tokens": 2, "finish_reason": "stop"}
            log.shadowed(Exchange("model-s", True, "where?", 3, 0.0), f"r{i}", production, shadow)
        log.answered(Exchange("model-p", True, "where?", 3, 0.0), "r9", production)  # rate 0
        await log.sampler.drain()

    asyncio.run(traffic())
    samples, _ = load_samples(store, 0)
    assert list(samples["shadow_of"]) == ["r0", "r1", "r2", "r3"]
    assert list(samples["agreed"]) == [True, True, False, False]
    assert "[EMAIL]" in samples["output"].iloc[3]
    report = shadow_report(store, hours=1)["models"]
    assert set(report) == {"model-s"}
    assert (report["model-s"]["pairs"], report["model-s"]["agreement"]) == (4, 0.5)
    assert [d["request_id"] for d in report["model-s"]["disagreements"]] == ["r2", "r3"]
    assert agree(" A  b", "a B") and not agree("a", "ab")


def test_the_shadow_verbs(job, tmp_path, capsys):  # noqa: F811
    store, args = job
    a, b = (_register(store, tmp_path, name) for name in "ab")
    assert main(["models", "promote", *args, a]) == 0
    assert main(["models", "shadow", *args, b, "--percent", "0"]) == 2
    assert "--percent 0 is out of range" in capsys.readouterr().err
    assert main(["models", "shadow", *args, b, "--percent", "25"]) == 0
    out = capsys.readouterr().out
    assert f"shadow: {b} answers 25% of production's users beside {a}" in out, out
    assert main(["models", "shadow-report", *args]) == 0
    assert json.loads(capsys.readouterr().out)["models"] == {}
    assert main(["models", "end-shadow", *args]) == 0
    assert f"ended the shadow of {b}" in capsys.readouterr().out
    assert main(["models", "history", *args]) == 0
    history = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in history] == ["promote", "shadow", "end_shadow"]


def test_each_answer_is_checked_for_refusal_and_schema_by_its_arm(tmp_path):
    """Online quality per arm: the replica counts refusals and schema failures of each
    answer under the model (and split) that gave it."""
    from ftray.serve.exchange import Exchange, ExchangeLog
    from ftray.serve.metrics import ServeMetrics
    from ftray.spec import MonitorSpec
    from ftray.store import Store

    metrics, seen = ServeMetrics(), []
    metrics.quality = lambda *args: seen.append(args)  # what reaches the counters
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}

    async def traffic():
        log = ExchangeLog(Store(str(tmp_path), "p"), MonitorSpec(sample_rate=0), metrics, schema)
        for model, split, text in [
            ("a", False, '{"label": "card"}'),
            ("b", True, "I'm sorry, I can't help with that."),
            ("b", True, "card"),
        ]:
            answer = {"text": text, "tokens": 1, "finish_reason": "stop"}
            log.answered(Exchange(model, True, "hi", 1, 0.0, split=split), model, answer)
        await log.drain()

    asyncio.run(traffic())
    assert seen == [("a", False, False, False), ("b", True, True, True), ("b", True, False, True)]


def test_mirrored_requests_beyond_the_bound_are_skipped_and_counted():
    """At most serve.shadow_max_in_flight shadow generations at once per replica; another
    mirrored request is counted as skipped, never queued."""
    from types import SimpleNamespace

    from ftray.serve.app import ChatModel

    started, skipped = [], []
    app = object.__new__(ChatModel.func_or_class)  # the class under the Serve deployment
    app.config = SimpleNamespace(serve=SimpleNamespace(shadow_max_in_flight=2))
    app.metrics = SimpleNamespace(shadow_skipped=skipped.append)
    app._shadows = 0
    app._shadow = lambda *args: args
    app._in_background = started.append
    for i in range(4):
        app._mirror("model-s", None, True, 8, f"req-{i}", {"text": "x"})
    app._mirror(None, None, True, 8, "req-5", {"text": "x"})  # no shadow: nothing at all
    assert [args[4] for args in started] == ["req-0", "req-1"]
    assert skipped == ["model-s", "model-s"] and app._shadows == 2
