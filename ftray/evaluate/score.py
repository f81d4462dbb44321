"""From a table of answers to metrics: per-example scores, per-arm aggregates, A/B scorers.

`table` is a pandas DataFrame with `prompt`, `completion` and, per arm (candidate,
incumbent), `<arm>_output`, `<arm>_tokens`, `<arm>_confidence`, `<arm>_latency_s` and, when
BERTScore ran, `<arm>_bertscore`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ftray.evaluate import metrics as m
from ftray.evaluate.compare import (
    Scorer,
    mcnemar,
    mean_scorer,
    paired_bootstrap,
    ratio_scorer,
    slices,
)
from ftray.evaluate.gate import apply_gate
from ftray.spec import METRIC_GROUPS, DataSpec, EvalSpec

ARMS = ("candidate", "incumbent")
# Rates over part of the answers: what their denominator counts (reported beside them).
DENOMINATORS = {
    "hallucination_rate": "checkable answers",
    "invented_field_rate": "predicted fields",
}


@dataclass(frozen=True)
class Task:
    """What is scored and how: the resolved task, metric groups and data rules."""

    name: str
    groups: list[str]
    primary: str
    labels: list[str] | None
    schema: dict | None
    threshold: float

    @classmethod
    def of(cls, spec: EvalSpec, data: DataSpec) -> Task:
        """The task `spec` resolves to for the data's labels or output schema."""
        name = spec.resolved_task(data.labels, data.output_schema)
        return cls(
            name=name,
            groups=spec.resolved_metrics(name),
            primary=spec.resolved_primary(name),
            labels=data.labels,
            schema=data.output_schema,
            threshold=spec.confidence_threshold,
        )

    @property
    def scalar_names(self) -> list[str]:
        return [n for g in self.groups if g != "consistency" for n in METRIC_GROUPS[g]]


def judge(table, sampled, task: Task, spec: EvalSpec):
    """Both arms' answers → (the table with per-example scores, the evaluation's results:
    `metrics`, `comparison` (paired bootstrap per metric), `mcnemar`, `slices`, `details`
    (what the report plots) and the `gate` verdict). `sampled` holds `<arm>_samples` for
    consistency, or is None. No Ray, no models: tested on hand-made tables."""
    table = score_examples(table, task)
    options: dict[str, Any] = {
        "samples": spec.bootstrap_samples,
        "level": spec.confidence_level,
        "seed": spec.seed,
    }
    comparison = {
        metric: paired_bootstrap(score, len(table), **options)
        for metric, score in scorers(table, task).items()
    }
    for metric, counts in denominators(table, task).items():
        comparison[metric].update(
            {f"{arm}_n": counts[arm] for arm in ARMS}, denominator=DENOMINATORS[metric]
        )
    if sampled is not None:
        agree = consistency({arm: list(sampled[f"{arm}_samples"]) for arm in ARMS})
        comparison["consistency"] = paired_bootstrap(mean_scorer(agree), len(sampled), **options)
    general = general_ppl(table)
    right = "correct" if task.labels else "exact"
    details = {arm: arm_details(table, task, arm) for arm in ARMS}
    metrics = {
        "examples": len(table),
        "task": task.name,
        "primary_metric": task.primary,
        **{
            arm: {
                **{metric: _round(row[arm]) for metric, row in comparison.items()},
                **{
                    f"{metric.removesuffix('_rate')}_n": row[f"{arm}_n"]
                    for metric, row in comparison.items()
                    if metric in DENOMINATORS
                },
                "latency_s": details[arm]["latency_s"],
                "output_tokens": details[arm]["output_tokens"],
            }
            for arm in ARMS
        },
        **({"general_ppl": general} if general else {}),
    }
    return table, {
        "metrics": metrics,
        "comparison": comparison,
        "mcnemar": mcnemar(list(table[f"candidate_{right}"]), list(table[f"incumbent_{right}"])),
        "slices": slices(
            [str(k) for k in table["completion" if task.labels else "source"]],
            _per_arm(table, right),
            "accuracy" if task.labels else "exact_match",
        ),
        "details": details,
        "gate": apply_gate(spec.gate, task.primary, comparison, general_ppl=general),
    }


def score_one(table, task: Task, wanted: list[str]) -> dict[str, float | None]:
    """One model's answers (`base_output`, `base_confidence`, optional `base_bertscore`)
    scored on the metrics `wanted`, by the same scorers as the A/B evaluation: its answers
    fill both arms, so every number is computed exactly as `ftray eval` computes it."""
    groups = [g for g, names in METRIC_GROUPS.items() if set(names) & set(wanted)]
    scoped = Task(**{**task.__dict__, "groups": groups})
    both = table.copy()
    for arm in ARMS:
        for column in ("output", "confidence", "bertscore"):
            if f"base_{column}" in table:
                both[f"{arm}_{column}"] = table[f"base_{column}"]
    found = scorers(score_examples(both, scoped), scoped)
    every = np.arange(len(both))
    return {name: found[name]("candidate", every) for name in wanted}


def general_ppl(table) -> dict | None:
    """The forgetting probe: each model's perplexity on the general-text sample (lower is
    better) and the candidate's ratio to the base model's; None when it was not measured."""
    if "base_general_ppl" not in table:
        return None
    found = {name: float(table[f"{name}_general_ppl"].iloc[0]) for name in ("base", *ARMS)}
    ratio = found["candidate"] / found["base"]
    return {**{k: round(v, 4) for k, v in found.items()}, "ratio": round(ratio, 4)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def score_examples(table, task: Task):
    """`table` plus per-arm per-example columns: `<arm>_exact`, `<arm>_label`,
    `<arm>_correct`, `<arm>_parsed`/`_compliant`/`_fields` (JSON text of the field
    outcomes)/`_field_f1` (json), `<arm>_rouge_l`, `<arm>_unsupported` and `<arm>_checked`
    (hallucination: the claims, and whether the answer could be checked at all)."""
    table = table.copy()
    refs = list(table["completion"])
    for arm in ARMS:
        outputs = [str(o) for o in table[f"{arm}_output"]]
        table[f"{arm}_exact"] = m.exact_match(outputs, refs)
        if task.labels:
            labels = [m.parse_label(o, task.labels) for o in outputs]
            table[f"{arm}_label"] = labels
            table[f"{arm}_correct"] = [p == r for p, r in zip(labels, refs, strict=True)]
        if "json" in task.groups:
            scores = [m.json_scores(o, r, task.schema) for o, r in zip(outputs, refs, strict=True)]
            for key in ("parsed", "compliant"):
                table[f"{arm}_{key}"] = [s[key] for s in scores]
            table[f"{arm}_fields"] = [json.dumps(s["fields"]) for s in scores]
            table[f"{arm}_field_f1"] = [m.example_field_f1(s["fields"]) for s in scores]
        if "rouge_l" in task.groups:
            table[f"{arm}_rouge_l"] = [m.rouge_l(o, r) for o, r in zip(outputs, refs, strict=True)]
        if "hallucination" in task.groups:
            table[f"{arm}_unsupported"] = [
                m.unsupported(o, p, r, task.name, task.labels)
                for o, p, r in zip(outputs, table["prompt"], refs, strict=True)
            ]
            # an unparsable JSON answer asserts nothing checkable: out of the denominator
            table[f"{arm}_checked"] = (
                list(table[f"{arm}_parsed"]) if task.name == "json" else [True] * len(table)
            )
    return table


def scorers(table, task: Task) -> dict[str, Scorer]:
    """One bootstrap scorer per scalar metric (consistency has its own examples)."""
    columns = {
        "exact_match": "exact",
        "parse_rate": "parsed",
        "schema_compliance": "compliant",
        "rouge_l": "rouge_l",
        "bertscore_f1": "bertscore",
    }
    out: dict[str, Scorer] = {}
    fields = _field_counts(table) if "json" in task.groups else {}
    for name in task.scalar_names:
        if name in columns:
            out[name] = mean_scorer(_per_arm(table, columns[name]))
        elif name == "hallucination_rate":
            checked = {arm: np.asarray(table[f"{arm}_checked"], dtype=bool) for arm in ARMS}
            claims = {
                arm: np.array([len(u) > 0 for u in table[f"{arm}_unsupported"]]) & checked[arm]
                for arm in ARMS
            }
            out[name] = ratio_scorer(claims, checked)
        elif name.startswith(("field_", "invented_field")):
            out[name] = partial(_field_score, fields, name)
        else:
            out[name] = _classification_scorer(table, task, name)
    return out


def denominators(table, task: Task) -> dict[str, dict[str, int]]:
    """Per rate in `DENOMINATORS` that was computed: each arm's denominator."""
    names = set(task.scalar_names)
    found: dict[str, dict[str, Any]] = {}
    if "hallucination_rate" in names:
        found["hallucination_rate"] = {arm: int(sum(table[f"{arm}_checked"])) for arm in ARMS}
    if "invented_field_rate" in names:
        counts = _field_counts(table)
        found["invented_field_rate"] = {
            arm: counts[arm].scores()["invented_field_n"] for arm in ARMS
        }
    return found


def _field_counts(table) -> dict[str, m.FieldCounts]:
    outcomes = {arm: [json.loads(f) for f in table[f"{arm}_fields"]] for arm in ARMS}
    names = list(dict.fromkeys(n for arm in ARMS for example in outcomes[arm] for n in example))
    return {arm: m.FieldCounts(outcomes[arm], names) for arm in ARMS}


def _field_score(counts: dict[str, m.FieldCounts], name: str, arm: str, idx: np.ndarray):
    return counts[arm].scores(idx)[name]


def _per_arm(table, column: str) -> dict[str, np.ndarray]:
    return {arm: np.asarray(table[f"{arm}_{column}"], dtype=float) for arm in ARMS}


def _classification_scorer(table, task: Task, name: str) -> Scorer:
    labels = task.labels
    assert labels is not None  # classification metrics are chosen only for a label set
    refs = np.asarray(table["completion"], dtype=object)
    preds = {arm: np.array([p or "" for p in table[f"{arm}_label"]], dtype=object) for arm in ARMS}
    conf = _per_arm(table, "confidence")

    def score(arm: str, idx: np.ndarray) -> float:
        if name == "macro_f1":
            return m.macro_f1(preds[arm][idx], refs[idx], labels)
        result = m.classification(
            list(preds[arm][idx]),
            list(refs[idx]),
            list(conf[arm][idx]),
            labels,
            task.threshold,
        )
        return result[name]

    return score


def arm_details(table, task: Task, arm: str) -> dict:
    """What the report plots for one arm: per-class table, confusion matrix, PR curve,
    latency and token summaries, unsupported claims."""
    details = {
        "latency_s": m.summarize(list(table[f"{arm}_latency_s"])),
        "output_tokens": m.summarize(list(table[f"{arm}_tokens"])),
        "output_tokens_all": [int(t) for t in table[f"{arm}_tokens"]],
    }
    if task.labels:
        refs = list(table["completion"])
        labels = list(table[f"{arm}_label"])
        conf = [float(c) for c in table[f"{arm}_confidence"]]
        result = m.classification(labels, refs, conf, task.labels, task.threshold)
        details["per_class"] = result["per_class"]
        details["confusion"] = m.confusion(labels, refs, task.labels)
        details["pr_curve"] = m.pr_curve(list(table[f"{arm}_correct"]), conf)
    if "json" in task.groups:
        details["per_field"] = _field_counts(table)[arm].per_field()
    return details


def per_example_primary(table, task: Task, arm: str) -> np.ndarray:
    """A per-example score in the primary metric's spirit, for ranking the worst examples."""
    for column in (
        "correct" if task.labels else None,
        "field_f1" if "json" in task.groups else None,
        "rouge_l" if "rouge_l" in task.groups else None,
        "bertscore" if "bertscore" in task.groups else None,
        "exact",
    ):
        if column and f"{arm}_{column}" in table:
            return np.asarray(table[f"{arm}_{column}"], dtype=float)
    raise AssertionError("exact is always scored")


def consistency(samples: dict[str, list[list[str]]]) -> dict[str, np.ndarray]:
    """Per arm, per example: the agreement rate of its sampled answers."""
    return {arm: np.array([m.agreement(s) for s in samples[arm]]) for arm in ARMS}
