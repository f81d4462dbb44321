"""The dataset's readable report: counts per rule, sample rejections, token statistics."""

from __future__ import annotations

import numpy as np

from ftray.spec import DataSpec

SAMPLES_PER_RULE = 3


def build_report(table, data: DataSpec) -> dict:
    """`table`: split, rule, reason, source, row, num_tokens, pii_redacted, truncated per
    record (pandas)."""
    quarantined = table[table["split"] == "quarantine"]
    samples = {
        rule: [
            {"source": r.source, "row": int(r.row), "reason": r.reason}
            for r in group.head(SAMPLES_PER_RULE).itertuples()
        ]
        for rule, group in quarantined.groupby("rule")
    }
    kept = table[table["split"] != "quarantine"]
    redacted = int(kept["pii_redacted"].sum())
    truncated = int(kept["truncated"].sum())
    return {
        "counts_by_rule": {rule: len(group) for rule, group in quarantined.groupby("rule")},
        "samples_by_rule": samples,
        "tokens": _token_stats(kept, data.max_seq_len),
        "pii_redacted": redacted,
        "truncated": truncated,
        "truncated_fraction": round(truncated / max(len(kept), 1), 4),
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


def _token_stats(kept, limit: int) -> dict:
    lengths = kept["num_tokens"].to_numpy()
    if not len(lengths):
        return {"examples": 0}
    edges = np.linspace(0, limit, 9).round().astype(int)
    counts, _ = np.histogram(lengths, bins=edges)
    return {
        "examples": len(lengths),
        "total": int(lengths.sum()),
        "mean": round(float(lengths.mean()), 1),
        "p50": int(np.percentile(lengths, 50)),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "histogram": {
            f"{lo}-{hi}": int(n) for lo, hi, n in zip(edges, edges[1:], counts, strict=False)
        },
        # a batch pads to its longest example: the share of real tokens at batch size 8, in order
        "padding_efficiency_b8": _padding_efficiency(lengths, 8),
        # the same batches with train.packing (rows of up to data.max_seq_len tokens)
        "packing_efficiency_b8": _packing_efficiency(lengths, 8, limit),
    }


def _padding_efficiency(lengths: np.ndarray, batch: int) -> float:
    real = padded = 0
    for start in range(0, len(lengths), batch):
        chunk = lengths[start : start + batch]
        real += int(chunk.sum())
        padded += int(chunk.max()) * len(chunk)
    return round(real / padded, 3) if padded else 1.0


def _packing_efficiency(lengths: np.ndarray, batch: int, limit: int) -> float:
    real = padded = 0
    for start in range(0, len(lengths), batch):
        rows: list[int] = []
        for n in lengths[start : start + batch]:
            fit = next((i for i, used in enumerate(rows) if used + n <= limit), None)
            if fit is None:
                rows.append(int(n))
            else:
                rows[fit] += int(n)
        real += sum(rows)
        padded += max(rows) * len(rows)
    return round(real / padded, 3) if padded else 1.0
