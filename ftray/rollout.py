"""Automatic canary decisions: promote when the canary matched production over a fixed
horizon of online traffic, roll it back as soon as it is clearly worse.

The evidence is the replicas' online counts (`ftray.serve.online`) of the requests the split
itself routed (`split` true), from the minute the canary began, and the latest `ftray
monitor` run. The rules (`serve.rollout`, copied into the canary's event when it starts, so
a decision can be replayed) are checked in this order:

1. a monitor alert on the canary from a run since it began: roll back;
2. from 20 requests per arm: the canary's 5xx rate above production's by more than
   `max_error_rate_increase`, significant in a one-sided two-proportion z-test at `alpha`:
   roll back;
3. once both arms have `min_ratings` feedback ratings: the canary's mean below production's
   by more than `max_rating_drop`: roll back;
4. once both arms have `min_requests`: a p95 latency above `max_latency_ratio` times
   production's rolls back, else the canary is promoted.

Until then the verdict is `wait`. Every decision is a registry event whose reason has the
numbers it was made on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

from ftray.serve.metrics import LATENCY_BOUNDARIES
from ftray.serve.online import FIELDS, empty
from ftray.store import Store

EARLY_ERRORS_FROM = 20  # requests per arm before the error test may roll back


@dataclass
class Verdict:
    """What the evidence says about the active split: `decision` is `promote`, `rollback`
    or `wait`; `reasons` say why; `arms` hold each arm's figures."""

    decision: str
    reasons: list[str]
    arms: dict = field(default_factory=dict)


def online_counts(store: Store, since: str) -> dict[tuple[str, bool], dict]:
    """Every replica's counts from UTC minute `since` (`YYYY-MM-DDTHH:MM`) on, summed per
    (model, split)."""
    folder = store.path("monitor", "online")
    totals: dict[tuple[str, bool], dict] = {}
    if not store.fs.exists(folder):
        return totals
    for path in sorted(store.fs.glob(folder + "/*.json")):
        for row in store.read_json("monitor", "online", path.rsplit("/", 1)[1])["rows"]:
            if row["minute"] < since:
                continue
            total = totals.setdefault((row["model"], bool(row["split"])), empty())
            for name in FIELDS:
                total[name] += row[name]
            total["latency"] = [
                a + b for a, b in zip(total["latency"], row["latency"], strict=True)
            ]
    return totals


def judge(split: dict, counts: dict, alerts: list[str], rules: dict) -> Verdict:
    """The verdict on canary event `split` from `counts` (`online_counts`), the canary's
    monitor `alerts` since it began, and `rules` (a `serve.rollout` dump)."""
    canary, control = (
        _figures(counts.get((m, True), empty())) for m in (split["model_id"], split["control"])
    )
    arms = {split["model_id"]: canary, split["control"]: control}
    if alerts and rules["rollback_on_alert"]:
        return Verdict("rollback", [f"monitor alerted on the canary: {', '.join(alerts)}"], arms)
    reasons = []
    if min(canary["seen"], control["seen"]) >= EARLY_ERRORS_FROM:
        increase = canary["error_rate"] - control["error_rate"]
        p = _one_sided_p(canary["errors"], canary["seen"], control["errors"], control["seen"])
        if increase > rules["max_error_rate_increase"] and p < rules["alpha"]:
            return Verdict(
                "rollback",
                [
                    f"5xx rate {canary['error_rate']:.3f} vs production's "
                    f"{control['error_rate']:.3f} (+{increase:.3f} > "
                    f"{rules['max_error_rate_increase']}, p={p:.2g})"
                ],
                arms,
            )
    if min(canary["ratings"], control["ratings"]) >= rules["min_ratings"]:
        drop = control["mean_rating"] - canary["mean_rating"]
        line = f"mean rating {canary['mean_rating']:.2f} vs {control['mean_rating']:.2f}"
        if drop > rules["max_rating_drop"]:
            return Verdict(
                "rollback", [f"{line} (drop {drop:.2f} > {rules['max_rating_drop']})"], arms
            )
        reasons.append(line)
    if min(canary["seen"], control["seen"]) < rules["min_requests"]:
        waiting = (
            f"{canary['seen']} and {control['seen']} of {rules['min_requests']} requests per arm"
        )
        return Verdict("wait", [waiting, *reasons], arms)
    ratio = canary["p95_s"] / max(control["p95_s"], 1e-9)
    latency = f"p95 latency {canary['p95_s']:.3f}s vs {control['p95_s']:.3f}s"
    if ratio > rules["max_latency_ratio"]:
        return Verdict(
            "rollback", [f"{latency} (x{ratio:.2f} > {rules['max_latency_ratio']})"], arms
        )
    errors = f"5xx rate {canary['error_rate']:.3f} vs {control['error_rate']:.3f}"
    return Verdict(
        "promote", [f"{canary['seen']} requests per arm or more", errors, latency, *reasons], arms
    )


def watch(
    store: Store, rules: dict, *, act: bool = True
) -> tuple[dict | None, Verdict | None, dict | None]:
    """Judge the active split on the rules its event recorded (else `rules`, a
    `serve.rollout` dump); for an automatic canary (`--auto`) with `act`, carry out a
    promotion or rollback. Returns (the split event or None, its verdict, the decision's
    event or None)."""
    from ftray import registry

    split = registry.active_split(registry.history(store))
    if split is None:
        return None, None, None
    counts = online_counts(store, _minute_of(split["at"]))
    verdict = judge(split, counts, _alerts(store, split), split.get("rules") or rules)
    if not (act and split.get("auto")) or verdict.decision == "wait":
        return split, verdict, None
    reason = f"auto: {'; '.join(verdict.reasons)}"
    if verdict.decision == "promote":
        return split, verdict, registry.promote(store, split["model_id"], reason=reason)
    return split, verdict, registry.rollback(store, reason=reason)


def _figures(counts: dict) -> dict:
    seen = counts["requests"] + counts["errors"]
    return {
        "seen": seen,
        "errors": counts["errors"],
        "error_rate": counts["errors"] / seen if seen else 0.0,
        "p95_s": _quantile(counts["latency"], 0.95),
        "ratings": counts["ratings"],
        "mean_rating": counts["rating_sum"] / counts["ratings"] if counts["ratings"] else 0.0,
        "flags": counts["flags"],
        "corrections": counts["corrections"],
    }


def _quantile(histogram: list[int], q: float) -> float:
    """Quantile `q` of a latency histogram, interpolated within its bucket (as Prometheus's
    histogram_quantile does); 0 for no observations."""
    total = sum(histogram)
    if not total:
        return 0.0
    rank, below = q * total, 0
    for i, count in enumerate(histogram):
        if below + count >= rank and count:
            if i == len(LATENCY_BOUNDARIES):
                return float(LATENCY_BOUNDARIES[-1])
            low = LATENCY_BOUNDARIES[i - 1] if i else 0.0
            return low + (LATENCY_BOUNDARIES[i] - low) * (rank - below) / count
        below += count
    return float(LATENCY_BOUNDARIES[-1])


def _one_sided_p(errors_a: int, n_a: int, errors_b: int, n_b: int) -> float:
    """P-value of "A's error rate is above B's" (two-proportion z-test, pooled)."""
    pooled = (errors_a + errors_b) / (n_a + n_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if spread == 0:
        return 1.0
    return 1 - NormalDist().cdf((errors_a / n_a - errors_b / n_b) / spread)


def _alerts(store: Store, split: dict) -> list[str]:
    """The checks of the latest `ftray monitor` run that alerted on the canary, if that run
    came after the canary began."""
    if not store.fs.exists(store.path("monitor", "latest.json")):
        return []
    run = store.read_json("monitor", "latest.json")
    if run["time"] < split["at"]:
        return []
    return [c["check"] for c in run["checks"] if c.get("model") == split["model_id"] and c["alert"]]


def _minute_of(stamp: str) -> str:
    return stamp[:16]  # `YYYY-MM-DDTHH:MM:SSZ` → its minute
