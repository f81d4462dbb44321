"""Shadow answers: when a shadow model's answer counts as the production answer's, and the
report of the recorded pairs (`ftray models shadow-report`).

A pair agrees when the two answers are the same text after case folding and whitespace
collapsing: a strict signal, right for labels and short answers; two differently worded
right answers to an open question disagree, and a person judges those.
"""

from __future__ import annotations

import time

from ftray.store import Store


def agree(production: str, shadow: str) -> bool:
    """Whether two answers are the same, ignoring case and spacing."""
    return _normal(production) == _normal(shadow)


def shadow_report(store: Store, *, hours: float) -> dict:
    """Per shadow model, the recorded pairs of the last `hours`: how many, the share that
    agree, the shadow's latency (p50, p95) and a few disagreements."""
    from ftray.monitor.samples import load_samples

    samples, unreadable = load_samples(store, time.time() - hours * 3600)
    pairs = samples[samples["shadow_of"].notna()]
    models = {}
    for model, rows in pairs.groupby("model"):
        agreed = rows["agreed"].astype(bool)
        differ = rows[~agreed].tail(5)
        models[str(model)] = {
            "pairs": len(rows),
            "agreement": round(float(agreed.mean()), 4),
            "latency_s": {
                "p50": round(float(rows["latency_s"].quantile(0.5)), 4),
                "p95": round(float(rows["latency_s"].quantile(0.95)), 4),
            },
            "disagreements": [
                {
                    "request_id": r.shadow_of,
                    "prompt": r.prompt,
                    "production": r.control_output,
                    "shadow": r.output,
                }
                for r in differ.itertuples()
            ],
        }
    return {"window_hours": hours, "models": models, "unreadable_sample_files": len(unreadable)}


def _normal(text: str) -> str:
    return " ".join(str(text).split()).casefold()
