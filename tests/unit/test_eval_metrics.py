"""Evaluation metrics, A/B statistics and the gate, against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftray.evaluate import metrics as m
from ftray.evaluate.compare import mcnemar, mean_scorer, paired_bootstrap, slices
from ftray.evaluate.gate import apply_gate
from ftray.spec import GateSpec

LABELS = ["card_arrival", "exchange_rate"]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("card_arrival", "card_arrival"),
        ("Card Arrival", "card_arrival"),  # case, spaces for underscores
        ("card-arrival.", "card_arrival"),
        ("It is exchange_rate, not card_arrival", "exchange_rate"),  # the earliest named
        ("card_arrivals", None),  # not a whole word
        ("", None),
        ("my card", None),
    ],
)
def test_parse_label(output, expected):
    assert m.parse_label(output, LABELS) == expected


def test_classification_at_a_threshold():
    # refs a a b b; answers a b b(abstains: 0.4 < 0.5) none
    result = m.classification(
        ["a", "b", "b", None], ["a", "a", "b", "b"], [0.9, 0.9, 0.4, 0.9], ["a", "b"], 0.5
    )
    assert result["accuracy"] == 0.5  # right answers, whatever their confidence
    assert result["per_class"]["a"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
        "predicted": 1,
    }
    # b: the one right answer abstained; the answered 'b' (for an 'a') is wrong
    assert result["per_class"]["b"]["precision"] == 0.0
    assert result["per_class"]["b"]["recall"] == 0.0
    assert result["macro_f1"] == pytest.approx(1 / 3)
    assert result["precision_at_threshold"] == pytest.approx(1 / 3)
    assert result["recall_at_threshold"] == 0.25
    assert result["abstain_rate"] == 0.25


def test_macro_f1_fast_path_matches_the_full_computation():
    pred, ref = ["a", "b", "b", ""], ["a", "a", "b", "b"]
    assert m.macro_f1(np.array(pred, dtype=object), np.array(ref, dtype=object), ["a", "b"]) == (
        pytest.approx((2 / 3 + 0.5) / 2)
    )
    full = m.classification(pred, ref, [1.0] * 4, ["a", "b"], 0.0)["macro_f1"]
    assert full == pytest.approx((2 / 3 + 0.5) / 2)


def test_pr_curve_and_confusion():
    points = m.pr_curve([True, False, True], [0.9, 0.8, 0.3])
    assert [(p["threshold"], p["precision"], p["recall"]) for p in points] == [
        (0.9, 1.0, pytest.approx(1 / 3)),
        (0.8, 0.5, pytest.approx(1 / 3)),
        (0.3, pytest.approx(2 / 3), pytest.approx(2 / 3)),
    ]
    matrix = m.confusion(["a", None, "a"], ["a", "b", "b"], ["a", "b"])["matrix"]
    assert matrix == [[1, 0, 0], [1, 0, 1]]  # last column: named no label


def test_json_scores():
    schema = {
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "number"}},
    }
    reference = '{"amount": 5, "currency": "USD"}'
    fenced = '```json\n{"amount": 5, "currency": "EUR"}\n```'
    assert m.json_scores(fenced, reference, schema) == {
        "parsed": True,
        "compliant": True,
        "fields": {
            "amount": {"gold": 1, "predicted": 1, "exact": 1, "normalized": 1},
            "currency": {"gold": 1, "predicted": 1, "exact": 0, "normalized": 0},
        },
    }
    assert m.json_scores('{"amount": "5"}', reference, schema)["compliant"] is False
    # unparsable: predicts nothing, so every reference field is missed
    assert m.json_scores("nope", reference, schema) == {
        "parsed": False,
        "compliant": False,
        "fields": {
            "amount": {"gold": 1, "predicted": 0, "exact": 0, "normalized": 0},
            "currency": {"gold": 1, "predicted": 0, "exact": 0, "normalized": 0},
        },
    }
    # a non-object answer or reference is one field, "$"
    assert m.json_scores("[1, 2]", "[1, 2]", None)["fields"] == {
        "$": {"gold": 1, "predicted": 1, "exact": 1, "normalized": 1}
    }


def test_normalized_values():
    assert m.normalize_value("  New   York ") == m.normalize_value("new york")
    assert m.normalize_value("1,000") == m.normalize_value(1000) == 1000.0
    assert m.normalize_value("5.0") == m.normalize_value(5)
    assert m.normalize_value(True) != m.normalize_value("true")
    assert m.normalize_value({"A": [" X "]}) == {"a": ["x"]}
    assert m.normalize_value("2024-05-01") == "2024-05-01"  # a date is not a number


# Four answers, by hand: an extra field and a case-only difference; a missing field; a wrong
# value and a number given as a string; an unparsable answer.
GOLD = [
    '{"city": "Paris", "date": "2024-05-01", "guests": 2}',
    '{"city": "Rome", "guests": 4}',
    '{"city": "Oslo", "guests": 1}',
    '{"city": "Lima", "date": "2024-06-02"}',
]
ANSWERS = [
    '{"city": "paris", "date": "2024-05-01", "guests": 2, "budget": 300}',
    '{"city": "Rome"}',
    '{"city": "Bergen", "guests": "1"}',
    "Sure! The city is Lima.",
]


def _field_counts():
    outcomes = [m.json_scores(a, g, None)["fields"] for a, g in zip(ANSWERS, GOLD, strict=True)]
    names = list(dict.fromkeys(n for example in outcomes for n in example))
    return m.FieldCounts(outcomes, names)


def test_field_precision_recall_f1_and_invented_fields_by_hand():
    counts = _field_counts()
    # city: 4 in the references, 3 predicted, 1 exact (Rome), 2 normalised (+ paris)
    # date: 2, 1, 1, 1; guests: 3, 2, 1 (2), 2 (+ "1"); budget: 0, 1, 0, 0 (invented)
    per_field = counts.per_field()
    assert per_field["city"] == {
        "precision": pytest.approx(1 / 3),
        "recall": pytest.approx(1 / 4),
        "f1": pytest.approx(2 / 7),
        "f1_normalized": pytest.approx(4 / 7),
        "support": 4,
        "predicted": 3,
    }
    assert per_field["date"]["f1"] == pytest.approx(2 / 3)
    assert per_field["guests"]["f1"] == pytest.approx(2 / 5)
    assert per_field["budget"]["support"] == 0 and per_field["budget"]["predicted"] == 1
    scores = counts.scores()
    # 9 reference fields, 7 predicted, 3 exact hits, 5 normalised hits
    assert scores["field_precision"] == pytest.approx(3 / 7)
    assert scores["field_recall"] == pytest.approx(3 / 9)
    assert scores["field_f1_micro"] == pytest.approx(6 / 16)
    assert scores["field_f1_micro_normalized"] == pytest.approx(10 / 16)
    # macro over the fields the references use (budget has no support)
    assert scores["field_f1_macro"] == pytest.approx((2 / 7 + 2 / 3 + 2 / 5) / 3)
    assert scores["field_f1_macro_normalized"] == pytest.approx((4 / 7 + 2 / 3 + 4 / 5) / 3)
    assert scores["invented_field_rate"] == pytest.approx(1 / 7)
    assert scores["invented_field_n"] == 7
    only_unparsable = counts.scores(np.array([3, 3]))
    assert only_unparsable["field_recall"] == 0.0 and only_unparsable["field_precision"] == 0.0
    assert only_unparsable["invented_field_rate"] is None  # nothing predicted: no rate
    first, unparsable = (m.json_scores(ANSWERS[i], GOLD[i], None)["fields"] for i in (0, 3))
    assert m.example_field_f1(first) == pytest.approx(2 * 2 / (3 + 4))
    assert m.example_field_f1(unparsable) == 0.0


def test_rouge_l():
    # LCS "the cat on the mat" = 5 of 6 words each way
    assert m.rouge_l("the cat sat on the mat", "The cat is on the mat") == pytest.approx(5 / 6)
    assert m.rouge_l("", "") == 1.0
    assert m.rouge_l("dog", "cat") == 0.0


def test_unsupported_claims_per_task():
    prompt, reference = "Send 5 euros to Berlin", '{"amount": 5, "city": "Berlin"}'
    made_up = m.unsupported(
        '{"amount": 7, "city": "Paris", "ok": true}', prompt, reference, "json", None
    )
    assert made_up == ["7", "Paris"]  # booleans assert nothing
    assert m.unsupported("not json", prompt, reference, "json", None) == []
    text = "Paris is in France. It had 3 million people in 2024; Berlin too."
    assert m.unsupported(text, "Where is Paris?", "Paris is in France", "generation", None) == [
        "3",
        "2024",
        "Berlin",
    ]
    assert m.unsupported("card_arrival", "", "", "classification", LABELS) == []
    assert m.unsupported("lost_wallet", "", "", "classification", LABELS) == ["lost_wallet"]


def test_agreement():
    assert m.agreement(["A", "a ", "b"]) == pytest.approx(2 / 3)
    assert m.agreement([]) == 0.0


def test_mcnemar_exact_and_chi2():
    exact = mcnemar([True] * 5 + [True] * 3, [False] * 5 + [True] * 3)
    assert (exact["b"], exact["c"], exact["method"]) == (5, 0, "exact")
    assert exact["p_value"] == pytest.approx(2 / 32)
    cand = [True] * 30 + [False] * 10 + [True] * 5
    inc = [False] * 30 + [True] * 10 + [True] * 5
    chi2 = mcnemar(cand, inc)
    assert chi2["method"] == "chi2"
    assert chi2["statistic"] == pytest.approx(19**2 / 40)
    assert chi2["p_value"] == pytest.approx(0.002663, abs=1e-5)  # χ²(1) tail at 9.025
    assert mcnemar([True], [True])["p_value"] == 1.0


def test_paired_bootstrap_intervals():
    n = 200
    rng = np.random.default_rng(1)
    inc = rng.random(n) < 0.5
    cand = inc.copy()
    cand[np.flatnonzero(~inc)[:30]] = True  # the candidate fixes 30 examples, breaks none
    values = {"candidate": cand.astype(float), "incumbent": inc.astype(float)}
    result = paired_bootstrap(mean_scorer(values), n, samples=500, level=0.95, seed=0)
    assert result["difference"] == pytest.approx(30 / n)
    low, high = result["difference_interval"]
    assert 0 < low < 30 / n < high
    # pairing: the difference's interval is tighter than one arm's (two independent samples
    # would give one about √2 times wider than an arm's)
    arm_width = result["incumbent_interval"][1] - result["incumbent_interval"][0]
    assert high - low < 0.8 * arm_width
    assert result["p_value"] == pytest.approx(1 / 500)
    same = paired_bootstrap(
        mean_scorer({"candidate": inc * 1.0, "incumbent": inc * 1.0}),
        n,
        samples=200,
        level=0.95,
        seed=0,
    )
    assert same["difference_interval"] == [0.0, 0.0] and same["p_value"] == 1.0


def test_slices():
    values = {"candidate": np.array([1.0, 0.0, 1.0]), "incumbent": np.array([0.0, 0.0, 1.0])}
    rows = slices(["a", "b", "a"], values, "accuracy")
    assert rows[0] == {
        "slice": "a",
        "examples": 2,
        "metric": "accuracy",
        "candidate": 1.0,
        "incumbent": 0.5,
        "difference": 0.5,
    }


def _row(candidate, incumbent, interval=None):
    diff = candidate - incumbent
    return {
        "candidate": candidate,
        "incumbent": incumbent,
        "difference": diff,
        "difference_interval": interval or [diff - 0.05, diff + 0.05],
    }


def test_gate_promotes_a_better_candidate():
    comparison = {
        "macro_f1": _row(0.8, 0.3),
        "exact_match": _row(0.8, 0.3),
        "hallucination_rate": _row(0.01, 0.2),
    }
    verdict = apply_gate(GateSpec(max_hallucination_rate=0.05), "macro_f1", comparison)
    assert verdict["passed"], verdict
    assert len(verdict["rules"]) == 5


def test_gate_rejects_and_lists_every_failed_rule():
    comparison = {
        "macro_f1": _row(0.52, 0.5, [-0.03, 0.07]),  # better, but not significantly
        "exact_match": _row(0.40, 0.45),  # regresses by 0.05 > ε
        "hallucination_rate": _row(0.10, 0.05),  # lower is better: regresses by 0.05
        "abstain_rate": _row(0.9, 0.1),  # reported, not gated
    }
    gate = GateSpec(max_regression=0.02, max_hallucination_rate=0.08, min_schema_compliance=0.9)
    verdict = apply_gate(gate, "macro_f1", comparison)
    failed = [r["rule"] for r in verdict["rules"] if not r["passed"]]
    assert not verdict["passed"]
    assert failed == [
        "macro_f1 interval of the difference excludes 0",
        "exact_match regresses by at most 0.02",
        "hallucination_rate regresses by at most 0.02",
        "hallucination_rate ≤ 0.08",
        "schema_compliance ≥ 0.9",  # not computed: fails rather than passing silently
    ]


def test_gate_min_improvement_and_floor():
    comparison = {"rouge_l": _row(0.55, 0.5, [0.02, 0.08])}
    assert not apply_gate(GateSpec(min_improvement=0.1), "rouge_l", comparison)["passed"]
    assert apply_gate(GateSpec(min_improvement=0.01), "rouge_l", comparison)["passed"]
    assert not apply_gate(GateSpec(min_primary=0.6), "rouge_l", comparison)["passed"]
    lenient = GateSpec(min_improvement=-0.1, require_significant=False)
    assert apply_gate(lenient, "rouge_l", {"rouge_l": _row(0.45, 0.5)})["passed"]
    assert math.isclose(comparison["rouge_l"]["difference"], 0.05)


def _rate(candidate, incumbent, candidate_n, incumbent_n, what="checkable answers"):
    return {
        **_row(candidate, incumbent),
        "candidate_n": candidate_n,
        "incumbent_n": incumbent_n,
        "denominator": what,
    }


def test_gate_skips_a_rate_the_incumbent_cannot_measure():
    # the base model never parses: its hallucination and invented-field rates measure nothing
    comparison = {
        "field_f1_micro": _row(0.69, 0.0),
        "parse_rate": _row(1.0, 0.01),
        "hallucination_rate": {
            **_row(0.067, 0.0),
            "incumbent": None,
            "difference": None,
            "difference_interval": None,
            "candidate_n": 150,
            "incumbent_n": 0,
            "denominator": "checkable answers",
        },
        "invented_field_rate": _rate(0.1, 0.0, 400, 3, "predicted fields"),
    }
    verdict = apply_gate(GateSpec(), "field_f1_micro", comparison)
    assert verdict["passed"], verdict
    skipped = {r["rule"]: r["detail"] for r in verdict["rules"] if r["skipped"]}
    assert set(skipped) == {
        "hallucination_rate regresses by at most 0.02",
        "invented_field_rate regresses by at most 0.02",
    }
    assert (
        "the incumbent's rate rests on 0 checkable answers"
        in skipped["hallucination_rate regresses by at most 0.02"]
    )
    assert "3 predicted fields" in skipped["invented_field_rate regresses by at most 0.02"]
    # with signal on both sides the same rates are compared, and the regression fails
    measured = {**comparison, "hallucination_rate": _rate(0.067, 0.013, 150, 40)}
    failed = [
        r["rule"]
        for r in apply_gate(GateSpec(), "field_f1_micro", measured)["rules"]
        if not r["passed"]
    ]
    assert failed == ["hallucination_rate regresses by at most 0.02"]
    detail = apply_gate(GateSpec(), "field_f1_micro", measured)["rules"][3]["detail"]
    assert detail == (
        "candidate 0.0670 (n=150 checkable answers), incumbent 0.0130 (n=40 checkable answers)"
    )
    # a ceiling on the candidate's own rate still applies; without any answer to check, skipped
    ceiling = GateSpec(ceilings={"hallucination_rate": 0.05})
    assert not apply_gate(ceiling, "field_f1_micro", comparison)["passed"]
    silent = {
        **comparison,
        "hallucination_rate": {
            **comparison["hallucination_rate"],
            "candidate": None,
            "candidate_n": 0,
        },
    }
    rules = apply_gate(ceiling, "field_f1_micro", silent)["rules"]
    assert rules[-1]["skipped"] and "no checkable answers" in rules[-1]["detail"]


def test_gate_tolerances_floors_and_exemptions_per_metric():
    comparison = {
        "field_f1_micro": _row(0.8, 0.6),
        "schema_compliance": _row(0.90, 0.95),  # regresses by 0.05
        "field_recall": _row(0.70, 0.75),  # regresses by 0.05
        "invented_field_rate": _rate(0.08, 0.02, 200, 150, "predicted fields"),  # + 0.06
    }
    gate = GateSpec(
        max_regression=0.02,
        max_regression_by_metric={"schema_compliance": 0.1, "invented_field_rate": None},
        floors={"field_recall": 0.8},
        ceilings={"invented_field_rate": 0.1},
    )
    verdict = apply_gate(gate, "field_f1_micro", comparison)
    by_rule = {r["rule"]: r for r in verdict["rules"]}
    assert by_rule["schema_compliance regresses by at most 0.1"]["passed"]
    assert not by_rule["field_recall regresses by at most 0.02"]["passed"]
    assert by_rule["invented_field_rate regression"]["skipped"]  # exempt, and says so
    assert "exempt" in by_rule["invented_field_rate regression"]["detail"]
    assert not by_rule["field_recall ≥ 0.8"]["passed"]
    assert by_rule["invented_field_rate ≤ 0.1"]["passed"]
    assert by_rule["invented_field_rate ≤ 0.1"]["detail"] == "candidate 0.0800"
    assert not verdict["passed"]
