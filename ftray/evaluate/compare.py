"""A/B statistics on paired examples: bootstrap intervals, McNemar's test, per-slice tables.

Both arms answered the same examples, so every resample draws example indices once and
scores both arms on them: the interval is of the paired difference, which is much tighter
than two independent intervals when the arms agree on most examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# A metric as the bootstrap sees it: (arm, example indices) -> value, or None where the
# examples give it nothing to measure (a rate whose denominator is 0).
Scorer = Callable[[str, np.ndarray], float | None]


def paired_bootstrap(score: Scorer, n: int, *, samples: int, level: float, seed: int) -> dict:
    """Candidate and incumbent values, their difference, and percentile intervals of each.

    `p_value` is the two-sided bootstrap p-value of "no difference": twice the smaller share
    of resampled differences on either side of 0 (at least 1/samples). A value the examples
    cannot measure is None, as is every figure that depends on it; resamples that cannot
    measure it are left out of the intervals.
    """
    everything = np.arange(n)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n)) if n else np.zeros((samples, 0), dtype=int)
    cand = np.array([_nan(score("candidate", idx)) for idx in draws])
    inc = np.array([_nan(score("incumbent", idx)) for idx in draws])
    diff = cand - inc
    tail = (1 - level) / 2

    def interval(values: np.ndarray) -> list[float] | None:
        values = values[np.isfinite(values)]
        if not len(values):
            return None
        return [float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))]

    candidate = _none(score("candidate", everything))
    incumbent = _none(score("incumbent", everything))
    finite = diff[np.isfinite(diff)]
    p_value = None
    difference = candidate - incumbent if candidate is not None and incumbent is not None else None
    if difference is not None and len(finite):
        below, above = float(np.mean(finite <= 0)), float(np.mean(finite >= 0))
        p_value = max(min(1.0, 2 * min(below, above)), 1 / samples)
    return {
        "candidate": candidate,
        "incumbent": incumbent,
        "difference": difference,
        "candidate_interval": interval(cand),
        "incumbent_interval": interval(inc),
        "difference_interval": None if difference is None else interval(diff),
        "p_value": p_value,
    }


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def _none(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def ratio_scorer(hits: dict[str, np.ndarray], counted: dict[str, np.ndarray]) -> Scorer:
    """A scorer for a rate over some of the examples: hits / counted, None when none counts."""

    def score(arm: str, idx: np.ndarray) -> float | None:
        total = counted[arm][idx].sum()
        return float(hits[arm][idx].sum() / total) if total else None

    return score


def mean_scorer(values: dict[str, np.ndarray]) -> Scorer:
    """A scorer for a per-example metric: the mean of each arm's values."""

    def score(arm: str, idx: np.ndarray) -> float:
        return float(values[arm][idx].mean()) if len(idx) else 0.0

    return score


def mcnemar(candidate_correct: list[bool], incumbent_correct: list[bool]) -> dict:
    """McNemar's test on the discordant pairs: `b` examples only the candidate gets right,
    `c` only the incumbent. Exact (binomial) when b + c < 25, else χ² with continuity
    correction; two-sided."""
    cand = np.asarray(candidate_correct, dtype=bool)
    inc = np.asarray(incumbent_correct, dtype=bool)
    b, c = int(np.sum(cand & ~inc)), int(np.sum(~cand & inc))
    discordant = b + c
    if discordant == 0:
        method, statistic, p_value = "exact", 0.0, 1.0
    elif discordant < 25:
        tail = sum(math.comb(discordant, k) for k in range(min(b, c) + 1)) / 2**discordant
        method, statistic, p_value = "exact", float(min(b, c)), min(1.0, 2 * tail)
    else:
        statistic = (abs(b - c) - 1) ** 2 / discordant
        method, p_value = "chi2", math.erfc(math.sqrt(statistic / 2))
    return {"b": b, "c": c, "method": method, "statistic": statistic, "p_value": p_value}


def slices(keys: list[str], values: dict[str, np.ndarray], metric: str) -> list[dict]:
    """Per slice (e.g. per reference label): examples and each arm's mean of `metric`."""
    keys_arr = np.asarray(keys, dtype=object)
    rows = []
    for key in sorted(set(keys)):
        mask = keys_arr == key
        cand = float(values["candidate"][mask].mean())
        inc = float(values["incumbent"][mask].mean())
        rows.append(
            {
                "slice": key,
                "examples": int(mask.sum()),
                "metric": metric,
                "candidate": cand,
                "incumbent": inc,
                "difference": cand - inc,
            }
        )
    return rows
