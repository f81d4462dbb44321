"""The promotion gate: the spec's rules applied to an A/B comparison, every verdict explained."""

from __future__ import annotations

from ftray.spec import LOWER_IS_BETTER, GateSpec

# Reported beside the quality metrics but never gated: they describe the answers, not their
# quality, or restate a gated metric at one threshold.
NOT_GATED = ("precision_at_threshold", "recall_at_threshold", "abstain_rate")


def apply_gate(
    gate: GateSpec, primary: str, comparison: dict[str, dict], human: dict | None = None
) -> dict:
    """`{"passed": bool, "pending": bool, "rules": [{"rule", "passed", "detail"}]}` for one
    comparison.

    `comparison` maps metric name to `paired_bootstrap`'s result for it; `human` is
    `ftray.review.stats.summarize`'s result for the evaluation's ratings (None before any).
    `pending`: only the human win-rate rule fails, for want of ratings.
    """
    rules = []

    def rule(name: str, passed: bool, detail: str) -> None:
        rules.append({"rule": name, "passed": bool(passed), "detail": detail})

    head = comparison[primary]
    delta = gate.min_improvement
    rule(
        f"{primary} ≥ incumbent + {delta:g}",
        head["candidate"] >= head["incumbent"] + delta,
        f"candidate {head['candidate']:.4f}, incumbent {head['incumbent']:.4f}",
    )
    if gate.require_significant:
        low, high = head["difference_interval"]
        rule(
            f"{primary} interval of the difference excludes {delta:g}",
            low > delta,
            f"difference {head['difference']:+.4f}, interval [{low:+.4f}, {high:+.4f}]",
        )
    for name, row in comparison.items():
        if name == primary or name in NOT_GATED:
            continue
        worse = row["difference"] if name in LOWER_IS_BETTER else -row["difference"]
        rule(
            f"{name} regresses by at most {gate.max_regression:g}",
            worse <= gate.max_regression + 1e-12,
            f"candidate {row['candidate']:.4f}, incumbent {row['incumbent']:.4f}",
        )
    floors = [
        ("hallucination_rate", gate.max_hallucination_rate, "≤", lambda v, x: v <= x),
        ("schema_compliance", gate.min_schema_compliance, "≥", lambda v, x: v >= x),
        (primary, gate.min_primary, "≥", lambda v, x: v >= x),
    ]
    for name, limit, sign, holds in floors:
        if limit is None:
            continue
        if name not in comparison:
            rule(f"{name} {sign} {limit:g}", False, f"{name} was not computed (eval.metrics)")
            continue
        value = comparison[name]["candidate"]
        rule(f"{name} {sign} {limit:g}", holds(value, limit), f"candidate {value:.4f}")
    awaiting = False
    if gate.min_human_win_rate is not None:
        name = f"human win rate ≥ {gate.min_human_win_rate:g}"
        counted = human["win_rate_ratings"] if human else 0
        awaiting = counted < gate.min_human_ratings
        if awaiting:
            rule(name, False, f"awaiting ratings: {counted} of {gate.min_human_ratings}")
        else:
            low, high = human["win_rate_interval"]
            rule(
                name,
                human["win_rate"] >= gate.min_human_win_rate,
                f"candidate {human['win_rate']:.4f}, interval [{low:.4f}, {high:.4f}], "
                f"{counted} ratings",
            )
    failed = sum(not r["passed"] for r in rules)
    return {"passed": failed == 0, "pending": awaiting and failed == 1, "rules": rules}
