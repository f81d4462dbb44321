"""The promotion gate: the spec's rules applied to an A/B comparison, every verdict explained.

Rates measured on part of the answers (`hallucination_rate` over the answers that could be
checked, `invented_field_rate` over predicted fields) carry their denominators in the
comparison (`candidate_n`, `incumbent_n`). A rule comparing such a rate is skipped, and says
why, when either arm has too little to measure: a base model that never produces parseable
JSON hallucinates nothing measurable, which is no evidence that it hallucinates less.
"""

from __future__ import annotations

from ftray.spec import LOWER_IS_BETTER, GateSpec

# Reported beside the quality metrics but never gated: they describe the answers, not their
# quality, or restate a gated metric at one threshold.
NOT_GATED = ("precision_at_threshold", "recall_at_threshold", "abstain_rate")


def apply_gate(
    gate: GateSpec,
    primary: str,
    comparison: dict[str, dict],
    human: dict | None = None,
    general_ppl: dict | None = None,
) -> dict:
    """`{"passed": bool, "pending": bool, "rules": [{"rule", "passed", "skipped", "detail"}]}`
    for one comparison.

    `comparison` maps metric name to `paired_bootstrap`'s result for it; `human` is
    `ftray.review.stats.summarize`'s result for the evaluation's ratings (None before any);
    `general_ppl` the forgetting probe's perplexities and their `ratio` (candidate / base).
    `pending`: only the human win-rate rule fails, for want of ratings. A skipped rule
    passes; its detail says why it could not be applied.
    """
    rules = []

    def rule(name: str, passed: bool, detail: str, skipped: bool = False) -> None:
        rules.append({"rule": name, "passed": bool(passed), "skipped": skipped, "detail": detail})

    _primary_rules(gate, primary, comparison[primary], rule)
    for name, row in comparison.items():
        if name == primary or name in NOT_GATED:
            continue
        limit = gate.max_regression_by_metric.get(name, gate.max_regression)
        if limit is None:
            rule(f"{name} regression", True, "exempt (eval.gate.max_regression_by_metric)", True)
            continue
        title = f"{name} regresses by at most {limit:g}"
        if (why := _no_signal(row, gate.min_signal)) is not None:
            rule(title, True, why, skipped=True)
        else:
            worse = row["difference"] if name in LOWER_IS_BETTER else -row["difference"]
            rule(title, worse <= limit + 1e-12, _values(row))
    for name, sign, limit in _limits(gate, primary):
        title = f"{name} {sign} {limit:g}"
        if name not in comparison:
            rule(title, False, f"{name} was not computed (eval.metrics)")
            continue
        value = comparison[name]["candidate"]
        if value is None:
            what = comparison[name].get("denominator", "examples")
            rule(title, True, f"the candidate has no {what} to measure", skipped=True)
            continue
        holds = value >= limit if sign == "≥" else value <= limit
        rule(title, holds, f"candidate {value:.4f}")
    if gate.max_general_ppl_ratio is not None:
        title = f"general_ppl ratio to the base model ≤ {gate.max_general_ppl_ratio:g}"
        if general_ppl is None:
            rule(title, False, "not measured (an evaluation from before the forgetting probe)")
        else:
            ratio = general_ppl["ratio"]
            detail = f"candidate {general_ppl['candidate']:.4g}, base {general_ppl['base']:.4g}"
            rule(title, ratio <= gate.max_general_ppl_ratio, f"{detail}, ratio {ratio:.4f}")
    awaiting = False
    if gate.min_human_win_rate is not None:
        name = f"human win rate ≥ {gate.min_human_win_rate:g}"
        counted = human["win_rate_ratings"] if human else 0
        awaiting = counted < gate.min_human_ratings
        if awaiting or human is None:
            rule(name, False, f"awaiting ratings: {counted} of {gate.min_human_ratings}")
        else:
            low, high = human["win_rate_interval"]
            rate = human["win_rate"]
            detail = f"candidate {rate:.4f}, interval [{low:.4f}, {high:.4f}], {counted} ratings"
            rule(name, rate >= gate.min_human_win_rate, detail)
    failed = sum(not r["passed"] for r in rules)
    return {"passed": failed == 0, "pending": awaiting and failed == 1, "rules": rules}


def apply_to_stored(gate: GateSpec, manifest: dict, human: dict | None = None) -> dict:
    """`apply_gate` on a stored evaluation's manifest (its comparison and forgetting probe)."""
    metrics = manifest["metrics"]
    primary, comparison = metrics["primary_metric"], manifest["comparison"]
    return apply_gate(gate, primary, comparison, human, general_ppl=metrics.get("general_ppl"))


def _primary_rules(gate: GateSpec, primary: str, head: dict, rule) -> None:
    delta = gate.min_improvement
    title = f"{primary} ≥ incumbent + {delta:g}"
    if head["difference"] is None:
        # the primary metric decides: no measurement is a failure, not a skip
        rule(title, False, f"not measurable: {_values(head)}")
        return
    rule(title, head["candidate"] >= head["incumbent"] + delta, _values(head))
    if gate.require_significant:
        low, high = head["difference_interval"]
        detail = f"difference {head['difference']:+.4f}, interval [{low:+.4f}, {high:+.4f}]"
        rule(f"{primary} interval of the difference excludes {delta:g}", low > delta, detail)


def _limits(gate: GateSpec, primary: str) -> list[tuple[str, str, float]]:
    """(metric, ≥ or ≤, value) for every floor and ceiling the gate sets."""
    found = [(name, "≥", value) for name, value in gate.floors.items()]
    found += [(name, "≤", value) for name, value in gate.ceilings.items()]
    for name, sign, value in (
        ("hallucination_rate", "≤", gate.max_hallucination_rate),
        ("schema_compliance", "≥", gate.min_schema_compliance),
        (primary, "≥", gate.min_primary),
    ):
        if value is not None:
            found.append((name, sign, value))
    return found


def _no_signal(row: dict, minimum: int) -> str | None:
    """Why a rate cannot be compared between the arms, or None when it can."""
    what = row.get("denominator")
    if what is None:
        return None if row["difference"] is not None else "not measurable for both arms"
    short = [arm for arm in ("incumbent", "candidate") if row[f"{arm}_n"] < minimum]
    if not short:
        return None
    counts = ", ".join(f"the {arm}'s rate rests on {row[f'{arm}_n']} {what}" for arm in short)
    return (
        f"{counts} (fewer than eval.gate.min_signal = {minimum}); nothing like-for-like to compare"
    )


def _values(row: dict) -> str:
    parts = []
    for arm in ("candidate", "incumbent"):
        value = row[arm]
        text = "n/a" if value is None else f"{value:.4f}"
        if f"{arm}_n" in row:
            text += f" (n={row[f'{arm}_n']} {row['denominator']})"
        parts.append(f"{arm} {text}")
    return ", ".join(parts)
