"""Task metrics over (output, reference) pairs: plain functions, no Ray, no models.

Each per-example function returns one value per example, so the A/B comparison can resample
examples (paired bootstrap); aggregate functions take those values, or index arrays into them.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used by exact match and label parsing."""
    return " ".join(str(text).strip().lower().split())


def exact_match(outputs: list[str], references: list[str]) -> list[bool]:
    """Per example: the output equals the reference after `normalize`."""
    return [normalize(o) == normalize(r) for o, r in zip(outputs, references, strict=True)]


def _prf(hits: float, predicted: float, gold: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of `hits` among `predicted` answers and `gold` references."""
    precision = hits / predicted if predicted else 0.0
    recall = hits / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# --- classification ------------------------------------------------------------------------


def _label_key(text: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", normalize(text)).split())


def parse_label(output: str, labels: list[str]) -> str | None:
    """The label an answer names: the whole answer when it is a label (ignoring case, spacing,
    `_`/`-`), else the label named earliest in it as whole words (longest first on a tie),
    else None (the answer names no allowed label)."""
    text = _label_key(output)
    keys = {_label_key(label): label for label in labels}
    if text in keys:
        return keys[text]
    found = []
    for key, label in keys.items():
        match = re.search(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])", text)
        if match:
            found.append((match.start(), -len(key), label))
    return min(found)[2] if found else None


def classification(
    predictions: list[str | None],
    references: list[str],
    confidences: list[float],
    labels: list[str],
    threshold: float,
) -> dict:
    """Accuracy, per-class and macro precision/recall/F1 at a confidence threshold.

    An answer whose confidence is below `threshold` abstains: it counts against recall, not
    precision. A prediction of None (no allowed label named) is answered and wrong.
    """
    pred = np.array([p if p is not None else "" for p in predictions], dtype=object)
    ref = np.array(references, dtype=object)
    answered = np.asarray(confidences, dtype=float) >= threshold
    correct = (pred == ref) & answered
    per_class = {}
    for label in labels:
        tp = int(np.sum(correct & (ref == label)))
        predicted = int(np.sum(answered & (pred == label)))
        support = int(np.sum(ref == label))
        precision, recall, f1 = _prf(tp, predicted, support)
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
            "predicted": predicted,
        }
    scored = [label for label in labels if per_class[label]["support"]] or labels
    n_answered = int(answered.sum())
    return {
        "accuracy": float(np.mean(pred == ref)) if len(ref) else 0.0,
        "threshold": threshold,
        "precision_at_threshold": float(correct.sum() / n_answered) if n_answered else 0.0,
        "recall_at_threshold": float(correct.sum() / len(ref)) if len(ref) else 0.0,
        "abstain_rate": float(1 - answered.mean()) if len(ref) else 0.0,
        "macro_precision": float(np.mean([per_class[lb]["precision"] for lb in scored])),
        "macro_recall": float(np.mean([per_class[lb]["recall"] for lb in scored])),
        "macro_f1": float(np.mean([per_class[lb]["f1"] for lb in scored])),
        "per_class": per_class,
    }


def macro_f1(pred: np.ndarray, ref: np.ndarray, labels: list[str]) -> float:
    """Macro F1 over the labels present in `ref` (all answers counted): the bootstrap's fast
    path, equal to `classification(...)['macro_f1']` at threshold 0."""
    scores = []
    for label in labels:
        support = np.sum(ref == label)
        if not support:
            continue
        tp = np.sum((pred == label) & (ref == label))
        scores.append(_prf(tp, np.sum(pred == label), support)[2])
    return float(np.mean(scores)) if scores else 0.0


def pr_curve(correct: list[bool], confidences: list[float]) -> list[dict]:
    """Precision and recall of the answers kept at each distinct confidence threshold."""
    correct_arr = np.asarray(correct, dtype=bool)
    conf = np.asarray(confidences, dtype=float)
    points = []
    for threshold in sorted(set(conf.tolist()), reverse=True):
        kept = conf >= threshold
        points.append(
            {
                "threshold": round(threshold, 6),
                "precision": float(correct_arr[kept].mean()),
                "recall": float(correct_arr[kept].sum() / max(len(correct_arr), 1)),
                "coverage": float(kept.mean()),
            }
        )
    return points


def confusion(predictions: list[str | None], references: list[str], labels: list[str]) -> dict:
    """`matrix[i][j]`: examples of reference label i answered as label j; the last column
    counts answers naming no allowed label."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels) + 1), dtype=int)
    for pred, ref in zip(predictions, references, strict=True):
        if ref in index:
            column = len(labels) if pred is None else index.get(pred, len(labels))
            matrix[index[ref], column] += 1
    return {"labels": labels, "columns": [*labels, "(none)"], "matrix": matrix.tolist()}


# --- JSON outputs ----------------------------------------------------------------------------


def parse_json(text: str):
    """The JSON value in an answer (a ```json fence allowed), or raise ValueError."""
    stripped = str(text).strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, flags=re.DOTALL)
    return json.loads(fence.group(1) if fence else stripped)


def json_scores(output: str, reference: str, schema: dict | None) -> dict:
    """One example: parsed?, schema-compliant?, and `fields`, its field-level outcomes
    (see `field_outcomes`; an unparsable answer predicts no field)."""
    from jsonschema import Draft202012Validator

    expected = _as_fields(_parse_or_text(reference))
    try:
        value = parse_json(output)
    except ValueError:
        return {"parsed": False, "compliant": False, "fields": field_outcomes({}, expected)}
    compliant = True if schema is None else Draft202012Validator(schema).is_valid(value)
    return {
        "parsed": True,
        "compliant": compliant,
        "fields": field_outcomes(_as_fields(value), expected),
    }


def _parse_or_text(text: str):
    try:
        return parse_json(text)
    except ValueError:
        return str(text)


def _as_fields(value) -> dict:
    """The top-level fields of a JSON value; anything but an object is one field, `$`."""
    return value if isinstance(value, dict) else {"$": value}


def normalize_value(value):
    """The form normalised matching compares: strings case-folded with whitespace collapsed,
    numbers (and strings that read as numbers) as floats, inside lists and objects too."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = " ".join(value.casefold().split())
        try:
            return float(text.replace(",", "")) if _NUMERIC.fullmatch(text) else text
        except ValueError:
            return text
    if isinstance(value, list):
        return [normalize_value(item) for item in value]
    if isinstance(value, dict):
        return {" ".join(str(k).casefold().split()): normalize_value(v) for k, v in value.items()}
    return value


_NUMERIC = re.compile(r"[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?(e[-+]?\d+)?")


def _same(a, b) -> bool:
    """Exact match: the same JSON value, types included (5 and 5.0 differ, as do 1 and true)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def field_outcomes(predicted: dict, gold: dict) -> dict[str, dict[str, int]]:
    """Per field named by either side: `gold` and `predicted` (1 when present there),
    `exact` and `normalized` (1 when both have it with equal values, as `_same` and after
    `normalize_value`)."""
    outcomes = {}
    for name in dict.fromkeys([*gold, *predicted]):
        both = name in gold and name in predicted
        outcomes[name] = {
            "gold": int(name in gold),
            "predicted": int(name in predicted),
            "exact": int(both and _same(predicted[name], gold[name])),
            "normalized": int(
                both and normalize_value(predicted[name]) == normalize_value(gold[name])
            ),
        }
    return outcomes


class FieldCounts:
    """Field outcomes of many examples as (examples × fields) count matrices, so any subset
    of examples (a bootstrap resample) is scored by summing rows."""

    def __init__(self, outcomes: list[dict[str, dict[str, int]]], fields: list[str]):
        self.fields = fields
        index = {name: j for j, name in enumerate(fields)}
        self.counts = {
            key: np.zeros((len(outcomes), len(fields)), dtype=np.int64)
            for key in ("gold", "predicted", "exact", "normalized")
        }
        for i, example in enumerate(outcomes):
            for name, row in example.items():
                for key, value in row.items():
                    self.counts[key][i, index[name]] = value
        # predicted fields their own example's reference does not have
        self.counts["invented"] = self.counts["predicted"] * (1 - self.counts["gold"])

    def _sums(self, idx: np.ndarray | None) -> dict[str, np.ndarray]:
        return {k: (v if idx is None else v[idx]).sum(axis=0) for k, v in self.counts.items()}

    def per_field(self, idx: np.ndarray | None = None) -> dict[str, dict]:
        """Per field: exact precision, recall, F1, normalised F1, support (gold), predicted."""
        sums = self._sums(idx)
        table = {}
        for j, name in enumerate(self.fields):
            gold, predicted = int(sums["gold"][j]), int(sums["predicted"][j])
            precision, recall, f1 = _prf(sums["exact"][j], predicted, gold)
            table[name] = {
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "f1_normalized": _prf(sums["normalized"][j], predicted, gold)[2],
                "support": gold,
                "predicted": predicted,
            }
        return table

    def scores(self, idx: np.ndarray | None = None) -> dict[str, float | None]:
        """The scalar field metrics over the examples `idx` (all when None)."""
        sums = self._sums(idx)
        gold, predicted = sums["gold"].sum(), sums["predicted"].sum()
        precision, recall, f1 = _prf(sums["exact"].sum(), predicted, gold)
        scored = sums["gold"] > 0  # macro: the fields the references use

        def macro(key: str) -> float:
            f1s = [
                _prf(sums[key][j], sums["predicted"][j], sums["gold"][j])[2]
                for j in np.flatnonzero(scored)
            ]
            return float(np.mean(f1s)) if f1s else 0.0

        return {
            "field_precision": float(precision),
            "field_recall": float(recall),
            "field_f1_micro": float(f1),
            "field_f1_macro": macro("exact"),
            "field_f1_micro_normalized": _prf(sums["normalized"].sum(), predicted, gold)[2],
            "field_f1_macro_normalized": macro("normalized"),
            "invented_field_rate": float(sums["invented"].sum() / predicted) if predicted else None,
            "invented_field_n": int(predicted),
        }


def example_field_f1(outcomes: dict[str, dict[str, int]]) -> float:
    """One example's exact field F1 (1 when neither side has a field): the report's per-example
    score for JSON answers."""
    gold = sum(o["gold"] for o in outcomes.values())
    predicted = sum(o["predicted"] for o in outcomes.values())
    if not gold and not predicted:
        return 1.0
    return 2 * sum(o["exact"] for o in outcomes.values()) / (gold + predicted)


# --- generation ------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", str(text).lower())


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of lower-cased word tokens."""
    a, b = _words(output), _words(reference)
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    return _prf(previous[-1], len(a), len(b))[2]


# --- hallucination ---------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"\b[A-Za-z][a-zA-Z]+")


def _names(text: str) -> list[str]:
    """Capitalised words that do not start a sentence."""
    names = []
    for match in _WORD.finditer(text):
        before = text[: match.start()].rstrip()
        if match.group()[0].isupper() and before and before[-1] not in ".!?:\n":
            names.append(match.group())
    return names


def _leaves(value) -> list[str]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, bool) or value is None:
        return []
    return [str(value)]


def unsupported(output: str, prompt: str, reference: str, task: str, labels: list | None) -> list:
    """What an answer asserts that neither the input nor the reference supports.

    classification: the answer itself, when it names no allowed label (an invented class);
    json: every string/number leaf of the parsed answer found in neither the prompt nor the
    reference's leaves (an unparsable answer asserts nothing here; the parse rate counts it);
    generation: every number, and every capitalised word not starting a sentence, absent
    from both the prompt and the reference. Comparisons ignore case.
    """
    if task == "classification":
        return [] if parse_label(output, labels or []) is not None else [str(output)]
    source = f"{prompt}\n{reference}".lower()
    if task == "json":
        try:
            leaves = _leaves(parse_json(output))
        except ValueError:
            return []
        allowed = {leaf.lower() for leaf in _leaves(_parse_or_text(reference))}
        return [
            leaf for leaf in leaves if leaf.lower() not in allowed and leaf.lower() not in source
        ]
    claims = _NUMBER.findall(str(output)) + _names(str(output))
    return [claim for claim in claims if claim.lower() not in source]


# --- consistency, latency ----------------------------------------------------------------------


def agreement(samples: list[str]) -> float:
    """Share of the samples that give the most common answer (after `normalize`)."""
    if not samples:
        return 0.0
    return Counter(normalize(s) for s in samples).most_common(1)[0][1] / len(samples)


def summarize(values: list[float]) -> dict:
    """Mean, p50 and p95 of a list of numbers."""
    arr = np.asarray(values, dtype=float)
    if not len(arr):
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0}
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
    }
