"""Statistics of pairwise ratings: counts, the candidate's win rate with a Wilson interval, and
inter-reviewer agreement (Cohen's kappa for two reviewers, Fleiss' kappa for more).

A rating here is a dict with `item`, `reviewer` and `preferred`: 'candidate', 'incumbent',
'tie' or 'both_bad' (the reviewer's A/B choice already mapped back to the arms).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from statistics import NormalDist
from typing import Any

PREFERENCES = ("candidate", "incumbent", "tie", "both_bad")
# A rating's score for the candidate; 'both bad' says nothing about which arm is better.
SCORE = {"candidate": 1.0, "tie": 0.5, "incumbent": 0.0}


def wilson_interval(p: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion `p` observed over `n` trials."""
    if n == 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf((1 + level) / 2)
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def win_rate(ratings: list[dict], level: float = 0.95) -> dict:
    """The candidate's win rate over items, ties counting half, 'both bad' left out.

    Each item scores the mean of its ratings, and the rate is the mean over items: several
    reviewers of one item are not independent samples, so the item is the unit, and the
    Wilson interval takes n = items. Scores of 0.5 vary less than 0/1 ones, so the interval is
    conservative when there are ties.
    """
    per_item: dict = defaultdict(list)
    for rating in ratings:
        if rating["preferred"] in SCORE:
            per_item[rating["item"]].append(SCORE[rating["preferred"]])
    n = len(per_item)
    rate = sum(sum(s) / len(s) for s in per_item.values()) / n if n else None
    return {
        "win_rate": rate,
        "win_rate_interval": list(wilson_interval(rate, n, level)) if rate is not None else None,
        "win_rate_items": n,
        "win_rate_ratings": sum(len(s) for s in per_item.values()),
    }


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items (None when chance explains all)."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(table: list[list[int]]) -> float | None:
    """Fleiss' kappa from per-item category counts; items may have different numbers of
    raters (each at least 2), with each item's agreement over its own rater pairs."""
    rows = [row for row in table if sum(row) >= 2]
    if not rows:
        return None
    total = sum(sum(row) for row in rows)
    shares = [sum(row[j] for row in rows) / total for j in range(len(rows[0]))]
    observed = sum(_pair_agreement(row) for row in rows) / len(rows)
    expected = sum(p * p for p in shares)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def agreement(ratings: list[dict]) -> dict:
    """Agreement on the items that at least two reviewers rated, over the four preferences
    (not the A/B letters, which differ between reviewers)."""
    by_item: dict = defaultdict(dict)
    for rating in ratings:
        by_item[rating["item"]][rating["reviewer"]] = rating["preferred"]
    shared = {item: votes for item, votes in by_item.items() if len(votes) >= 2}
    reviewers = sorted({r for votes in shared.values() for r in votes})
    result: dict[str, Any] = {"method": None, "kappa": None, "observed": None, "items": len(shared)}
    result["reviewers"] = len(reviewers)
    if not shared:
        return result
    table = [[Counter(votes.values())[p] for p in PREFERENCES] for votes in shared.values()]
    if len(reviewers) == 2:
        pairs = [(votes[reviewers[0]], votes[reviewers[1]]) for votes in shared.values()]
        result["method"], result["kappa"] = "cohen", cohen_kappa(pairs)
    else:
        result["method"], result["kappa"] = "fleiss", fleiss_kappa(table)
    # What kappa corrects for chance: the share of reviewer pairs agreeing, averaged over items.
    result["observed"] = sum(_pair_agreement(row) for row in table) / len(table)
    return result


def summarize(ratings: list[dict], level: float = 0.95) -> dict:
    """Counts per preference, the win rate with its interval, and agreement.

    `ratings` holds one rating per reviewer and item (`ftray.review.ratings.latest`).
    """
    counts = Counter(rating["preferred"] for rating in ratings)
    return {
        "ratings": len(ratings),
        "reviewers": len({rating["reviewer"] for rating in ratings}),
        "items_rated": len({rating["item"] for rating in ratings}),
        "counts": {p: counts[p] for p in PREFERENCES},
        **win_rate(ratings, level),
        "interval": f"Wilson score, {level:.0%}, n = items",
        "agreement": agreement(ratings),
    }


def _pair_agreement(row: list[int]) -> float:
    """Of an item's reviewer pairs (its category counts in `row`), the share that agree."""
    n = sum(row)
    return (sum(c * c for c in row) - n) / (n * (n - 1))
