"""Human-review statistics against numbers worked out by hand (or from textbook examples)."""

from __future__ import annotations

import pytest

from ftray.evaluate.gate import apply_gate
from ftray.review.ratings import candidate_side, latest, preferred, reviewer_order
from ftray.review.stats import (
    agreement,
    cohen_kappa,
    fleiss_kappa,
    summarize,
    wilson_interval,
)
from ftray.spec import GateSpec


def _ratings(rows: list[tuple[int, str, str]]) -> list[dict]:
    return [{"item": i, "reviewer": r, "preferred": p} for i, r, p in rows]


# Two reviewers, five items. Per item, the candidate's score (ties half, 'both bad' out):
# 0: 1, 1  → 1      1: 0, ½ → ¼      2: ½ → ½      3: (out), 1 → 1      4: (out), (out) → none
# win rate = (1 + ¼ + ½ + 1) / 4 = 0.6875 over 4 items, from 6 ratings.
TWO_REVIEWERS = _ratings(
    [
        (0, "alice", "candidate"),
        (0, "bob", "candidate"),
        (1, "alice", "incumbent"),
        (1, "bob", "tie"),
        (2, "alice", "tie"),
        (3, "alice", "both_bad"),
        (3, "bob", "candidate"),
        (4, "alice", "both_bad"),
        (4, "bob", "both_bad"),
    ]
)


def test_wilson_interval_matches_the_textbook():
    # 8 of 10 at 95 %: the Wilson score interval is [0.4902, 0.9433].
    low, high = wilson_interval(0.8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    # 0 of 10: upper bound z²/(n + z²) = 3.8415 / 13.8415.
    assert wilson_interval(0.0, 10)[1] == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    assert wilson_interval(0.5, 0) == (0.0, 1.0)


def test_win_rate_counts_ties_half_and_leaves_both_bad_out():
    summary = summarize(TWO_REVIEWERS)
    assert summary["counts"] == {"candidate": 3, "incumbent": 1, "tie": 2, "both_bad": 3}
    assert (summary["ratings"], summary["reviewers"], summary["items_rated"]) == (9, 2, 5)
    assert summary["win_rate"] == pytest.approx(0.6875)
    assert (summary["win_rate_items"], summary["win_rate_ratings"]) == (4, 6)
    # Wilson with p = 0.6875, n = 4 items, z = 1.95996: centre (p + z²/8) / (1 + z²/4) =
    # 1.16768 / 1.96037 = 0.59565; half-width z / 1.96037 · √(p(1-p)/4 + z²/64) = 0.33718.
    low, high = summary["win_rate_interval"]
    assert low == pytest.approx(0.59565 - 0.33718, abs=1e-4)
    assert high == pytest.approx(0.59565 + 0.33718, abs=1e-4)
    assert summarize([])["win_rate"] is None and summarize([])["win_rate_interval"] is None


def test_cohen_kappa_for_two_reviewers():
    # The classic 2×2 example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no → p_o = 0.7,
    # p_e = 0.5·0.6 + 0.5·0.4 = 0.5, κ = 0.4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    # On TWO_REVIEWERS, items 0, 1, 3, 4 are shared; alice/bob agree on 0 and 4: p_o = ½.
    # alice: candidate 1, incumbent 1, both_bad 2; bob: candidate 2, tie 1, both_bad 1;
    # p_e = (1·2 + 2·1) / 16 = ¼; κ = (½ − ¼) / (1 − ¼) = ⅓.
    found = agreement(TWO_REVIEWERS)
    assert found["method"] == "cohen" and (found["items"], found["reviewers"]) == (4, 2)
    assert found["kappa"] == pytest.approx(1 / 3)
    assert found["observed"] == pytest.approx(0.5)


def test_fleiss_kappa_matches_the_textbook_and_takes_uneven_raters():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories → κ ≈ 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=1e-3)
    # Three reviewers, item 2 rated by two only. Agreeing pairs per item: 3/3, 1/3, 1/1 →
    # P̄ = 7/9; shares of 8 ratings: candidate ½, incumbent ¼, tie ¼ → P_e = 3/8;
    # κ = (7/9 − 3/8) / (1 − 3/8) = 29/45.
    three = _ratings(
        [
            (0, "a", "candidate"),
            (0, "b", "candidate"),
            (0, "c", "candidate"),
            (1, "a", "candidate"),
            (1, "b", "incumbent"),
            (1, "c", "incumbent"),
            (2, "a", "tie"),
            (2, "b", "tie"),
            (3, "c", "tie"),  # one rater: not part of agreement
        ]
    )
    found = agreement(three)
    assert found["method"] == "fleiss" and (found["items"], found["reviewers"]) == (3, 3)
    assert found["kappa"] == pytest.approx(29 / 45)
    assert found["observed"] == pytest.approx(7 / 9)


def test_agreement_without_overlap_or_variation():
    assert agreement(_ratings([(0, "a", "tie"), (1, "b", "tie")]))["method"] is None
    unanimous = agreement(_ratings([(0, "a", "tie"), (0, "b", "tie")]))
    assert unanimous["kappa"] is None and unanimous["observed"] == 1.0  # chance explains all


def test_arrangement_is_fixed_per_reviewer_and_mapped_back_to_the_arms():
    order = reviewer_order("eval-x", "alice", range(20))
    assert sorted(order) == list(range(20))
    assert order == reviewer_order("eval-x", "alice", range(20))
    assert order != reviewer_order("eval-x", "bob", range(20)) != list(range(20))
    sides = [candidate_side("eval-x", item, "alice") for item in range(20)]
    assert set(sides) == {"A", "B"}
    assert preferred("A", "A") == "candidate" and preferred("A", "B") == "incumbent"
    assert preferred("B", "A") == "incumbent" and preferred("tie", "B") == "tie"
    rows = [
        {"id": "1", "reviewer": "a", "item": 0, "preferred": "tie"},
        {"id": "2", "reviewer": "a", "item": 0, "preferred": "candidate"},
    ]
    assert [r["id"] for r in latest(rows)] == ["2"]  # a second rating replaces the first


def _row(candidate: float, incumbent: float) -> dict:
    diff = candidate - incumbent
    return {
        "candidate": candidate,
        "incumbent": incumbent,
        "difference": diff,
        "difference_interval": [diff - 0.05, diff + 0.05],
    }


def test_gate_waits_for_ratings_then_applies_the_human_win_rate():
    gate = GateSpec(min_human_win_rate=0.6, min_human_ratings=6)
    good = {"macro_f1": _row(0.8, 0.5)}
    waiting = apply_gate(gate, "macro_f1", good)
    assert (waiting["passed"], waiting["pending"]) == (False, True)
    assert waiting["rules"][-1]["detail"] == "awaiting ratings: 0 of 6"
    # an automatic rule failing decides at once: rejected, not pending
    bad = apply_gate(gate, "macro_f1", {"macro_f1": _row(0.4, 0.5)})
    assert (bad["passed"], bad["pending"]) == (False, False)
    passed = apply_gate(gate, "macro_f1", good, summarize(TWO_REVIEWERS))
    assert (passed["passed"], passed["pending"]) == (True, False)
    assert passed["rules"][-1]["rule"] == "human win rate ≥ 0.6"
    assert "candidate 0.6875" in passed["rules"][-1]["detail"]
    strict = GateSpec(min_human_win_rate=0.7, min_human_ratings=6)
    failed = apply_gate(strict, "macro_f1", good, summarize(TWO_REVIEWERS))
    assert (failed["passed"], failed["pending"]) == (False, False)
    too_few = GateSpec(min_human_win_rate=0.6, min_human_ratings=7)
    assert apply_gate(too_few, "macro_f1", good, summarize(TWO_REVIEWERS))["pending"]
