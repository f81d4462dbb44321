"""The dataset's readable report: counts per rule, sample rejections, token statistics."""

from __future__ import annotations

import numpy as np

from ftray.data.tally import Tally, lengths_array
from ftray.spec import DataSpec

PACKING_SAMPLE = 50_000


def build_report(tally: Tally, data: DataSpec) -> dict:
    """report.json: counts and sample rejections per rule, token statistics, the checks."""
    kept = sum(tally.lengths.values())
    samples = {
        rule: [{key: s[key] for key in ("source", "row", "reason")} for s in found]
        for rule, found in sorted(tally.samples.items())
    }
    return {
        "counts_by_rule": dict(sorted(tally.rules.items())),
        "samples_by_rule": samples,
        "tokens": _token_stats(tally.lengths, data.max_seq_len),
        "pii_redacted": tally.pii_redacted,
        "truncated": tally.truncated,
        "truncated_fraction": round(tally.truncated / max(kept, 1), 4),
        "checks": _checks(data),
    }


def _checks(data: DataSpec) -> dict:
    toxicity = data.toxicity
    carved = "stratified by label" if data.labels else "by prompt hash"
    split = {
        "eval": "eval_sources" if data.eval_sources else carved,
        "validation": "validation_sources" if data.validation_sources else carved,
    }
    return {
        "dedup": data.dedup.model_dump(mode="json"),
        "pii": data.pii.action,
        "toxicity": "hook" if toxicity.hook else ("word list" if toxicity.enabled else "off"),
        "output_contract": "labels" if data.labels else ("schema" if data.output_schema else None),
        "split": split,
    }


def _token_stats(lengths: dict[int, int], limit: int) -> dict:
    """Token counts of the kept examples, from their histogram (length → examples)."""
    if not lengths:
        return {"examples": 0}
    values = np.array(sorted(lengths), dtype=np.int64)
    counts = np.array([lengths[v] for v in values], dtype=np.int64)
    total = int(counts.sum())
    edges = np.linspace(0, limit, 9).round().astype(int)
    histogram, _ = np.histogram(values, bins=edges, weights=counts)
    return {
        "examples": total,
        "total": int((values * counts).sum()),
        "mean": round(float((values * counts).sum() / total), 1),
        "p50": _percentile(values, counts, 50),
        "p95": _percentile(values, counts, 95),
        "max": int(values[-1]),
        "histogram": {
            f"{lo}-{hi}": int(n) for lo, hi, n in zip(edges, edges[1:], histogram, strict=False)
        },
        # random batches of 8 (training shuffles), each padded to its longest example
        "padding_efficiency_b8": _padding_efficiency(values, counts, 8),
        # train.packing's rows (first-fit decreasing over the epoch), dealt 8 examples a step
        "packing_efficiency_b8": _packing_efficiency(lengths, 8, limit),
    }


def _percentile(values: np.ndarray, counts: np.ndarray, q: float) -> int:
    """np.percentile's linear interpolation on the lengths the histogram stands for."""
    cum = np.cumsum(counts)
    position = q / 100 * (cum[-1] - 1)
    low = int(np.floor(position))
    high = min(low + 1, int(cum[-1]) - 1)
    at_low, at_high = (values[np.searchsorted(cum, i, side="right")] for i in (low, high))
    return int(at_low + (at_high - at_low) * (position - low))


def _padding_efficiency(values: np.ndarray, counts: np.ndarray, batch: int) -> float:
    """Real tokens over padded ones in random batches: the mean length over the expected
    longest of `batch` draws (P(max ≤ v) = F(v) ** batch)."""
    share = np.cumsum(counts) / counts.sum()
    below = np.concatenate([[0.0], share[:-1]])
    longest = float((values * (share**batch - below**batch)).sum())
    mean = float((values * counts).sum() / counts.sum())
    return round(mean / longest, 3)


def _packing_efficiency(lengths: dict[int, int], batch: int, limit: int) -> float:
    """Real tokens over padded ones with train.packing: rows of up to `limit` tokens chosen
    over the epoch, dealt into one micro-batch per `batch` examples, each padded to its
    longest row (on an evenly spaced sample of 50,000 lengths where there are more)."""
    from ftray.train.collate import deal_rows

    sample = [int(n) for n in lengths_array(lengths, PACKING_SAMPLE)]
    steps = -(-len(sample) // batch)
    real = padded = 0
    for rows in deal_rows(sample, max(limit, max(sample)), steps, 0, 0):
        used = [sum(sample[i] for i in row) for row in rows]
        real += sum(used)
        padded += max(used) * len(used)
    return round(real / padded, 3) if padded else 1.0
