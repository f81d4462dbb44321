"""The promotion gate: the spec's rules applied to an A/B comparison, every verdict explained."""

from __future__ import annotations

from ftray.spec import LOWER_IS_BETTER, GateSpec

# Reported beside the quality metrics but never gated: they describe the answers, not their
# quality, or restate a gated metric at one threshold.
NOT_GATED = ("precision_at_threshold", "recall_at_threshold", "abstain_rate")


def apply_gate(gate: GateSpec, primary: str, comparison: dict[str, dict]) -> dict:
    """`{"passed": bool, "rules": [{"rule", "passed", "detail"}]}` for one comparison.

    `comparison` maps metric name to `paired_bootstrap`'s result for it.
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
    return {"passed": all(r["passed"] for r in rules), "rules": rules}
