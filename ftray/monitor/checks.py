"""Quality checks on sampled production traffic: plain functions, no Ray, no models.

Every check returns the same shape: `{"check", "value", "threshold", "direction" ('max':
alert above, 'min': alert below), "n", "alert", "detail", "examples"}`. A check with fewer
than its minimum of observations reports its value but never alerts.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from ftray.evaluate import metrics as m

REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry|i can'?t|i cannot|i am unable|i'?m unable|"
    r"i won'?t|as an ai\b)",
    re.IGNORECASE,
)


def psi(reference, sample, *, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of a numeric `sample` against `reference`: bins at the
    reference's quantiles, Σ (s − r) ln(s / r) over bins (shares floored at `eps`).
    Rule of thumb: < 0.1 stable, 0.1–0.25 moderate, > 0.25 a real shift."""
    ref = np.asarray(reference, dtype=float)
    new = np.asarray(sample, dtype=float)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    s = np.bincount(np.searchsorted(edges, new, side="right"), minlength=len(edges) + 1)
    return _psi_shares(r / max(r.sum(), 1), s / max(s.sum(), 1), eps)


def categorical_psi(reference: list, sample: list, eps: float = 1e-4) -> float:
    """PSI of two categorical distributions over the union of their categories."""
    cats = sorted(set(reference) | set(sample), key=str)
    r, s = Counter(reference), Counter(sample)
    ref = np.array([r[c] for c in cats], dtype=float)
    new = np.array([s[c] for c in cats], dtype=float)
    return _psi_shares(ref / max(ref.sum(), 1), new / max(new.sum(), 1), eps)


def _psi_shares(ref: np.ndarray, new: np.ndarray, eps: float) -> float:
    ref, new = np.maximum(ref, eps), np.maximum(new, eps)
    return float(np.sum((new - ref) * np.log(new / ref)))


def is_empty_or_refusal(output: str | None) -> bool:
    """An empty answer, or one that opens by declining ("I'm sorry", "I can't", "As an AI")."""
    text = (output or "").strip()
    return not text or bool(REFUSAL.match(text))


def result(
    check: str,
    value: float,
    threshold: float,
    direction: str,
    n: int,
    minimum: int,
    detail: str,
    examples: list | None = None,
) -> dict:
    """One check's outcome; alerts only with at least `minimum` observations."""
    breached = value > threshold if direction == "max" else value < threshold
    return {
        "check": check,
        "value": round(float(value), 6),
        "threshold": threshold,
        "direction": direction,
        "n": n,
        "alert": bool(breached and n >= minimum),
        "detail": detail + ("" if n >= minimum else f" ({n} observed; {minimum} needed to alert)"),
        "examples": examples or [],
    }


def label_shift(outputs: list[str], train_labels: list[str], labels: list[str]) -> tuple:
    """(PSI of the answers' labels vs the training labels, the answers' label shares)."""
    answered = [m.parse_label(o, labels) or "(none)" for o in outputs]
    shares = {k: round(v / max(len(answered), 1), 4) for k, v in Counter(answered).items()}
    return categorical_psi(train_labels, answered), shares


def schema_failures(outputs: list[str], schema: dict | None) -> list[int]:
    """Indexes of answers that are not JSON valid against `schema`."""
    return [i for i, o in enumerate(outputs) if not m.json_scores(o, "null", schema)["compliant"]]


def correction_agreement(feedback: list[dict]) -> tuple[float, int]:
    """Share of corrected answers the model had already got right, and how many there are."""
    pairs = [
        (f["output"], f["correction"])
        for f in feedback
        if f.get("correction") and f.get("output") is not None
    ]
    if not pairs:
        return 1.0, 0
    hits = m.exact_match([o for o, _ in pairs], [c for _, c in pairs])
    return sum(hits) / len(hits), len(hits)
