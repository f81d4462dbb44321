"""Exact and near-duplicate detection over a Ray Dataset, distributed by hash key.

Exact: records grouped by their normalised-text hash. Near: MinHash signatures cut into LSH
bands; records sharing a band bucket are candidates, confirmed by estimated Jaccard
similarity. Both are Ray Data groupbys, so the work spreads over the cluster by key. Within
each group the record that comes first (by source order; training sources before eval
sources) is kept; every later one is reported with the record it duplicates. An eval record
that duplicates a training record is a leak (rule 'leakage').
"""

from __future__ import annotations

import numpy as np

from ftray.data.checks import similarity
from ftray.spec import DedupSpec

# A bucket this large means degenerate data (say, thousands of near-empty texts); compare its
# members with its first MAX_BUCKET records only, to keep the work linear.
MAX_BUCKET = 256
_COLUMNS = ["order", "origin", "source", "row"]


def find_duplicates(passing, spec: DedupSpec) -> dict[int, tuple[str, str]]:
    """order → (rule, reason) for every record to drop; `passing` holds checked records."""
    drops: dict[int, tuple[str, str]] = {}
    if spec.exact:
        exact = passing.select_columns([*_COLUMNS, "exact_key"]).groupby("exact_key")
        for row in exact.map_groups(_exact_group, batch_format="pandas").iter_rows():
            drops[int(row["order"])] = _verdict(row, "same text as", None)
    if spec.near:
        drops.update(_near(passing, spec, set(drops)))
    return drops


def _near(passing, spec: DedupSpec, dropped: set[int]) -> dict[int, tuple[str, str]]:
    """Candidates from shared LSH buckets (a groupby carrying only ids), then verified.

    Only the candidates' signatures are fetched for the similarity check, so the shuffle
    moves a few ids per band per record, not the signatures.
    """
    from ray.data.expressions import col

    bands = passing.select_columns(["order", "band_keys"]).flat_map(_explode)
    pairs = bands.groupby("band_key").map_groups(_candidate_pairs, batch_format="pandas")
    candidates = {
        (int(r["later"]), int(r["earlier"]))
        for r in pairs.iter_rows()
        if int(r["later"]) not in dropped
    }
    if not candidates:
        return {}
    involved = sorted({order for pair in candidates for order in pair})
    rows = passing.filter(expr=col("order").is_in(involved))
    rows = rows.select_columns([*_COLUMNS, "signature"]).take_all()
    info = {int(r["order"]): r for r in rows}
    best: dict[int, tuple[int, float]] = {}
    for later, earlier in sorted(candidates):
        sim = similarity(_signature(info[later]), _signature(info[earlier]))
        if sim >= spec.threshold and (later not in best or earlier < best[later][0]):
            best[later] = (earlier, sim)
    drops = {}
    for later, (earlier, sim) in best.items():
        row = {**info[later], **{f"match_{k}": info[earlier][k] for k in _COLUMNS}}
        drops[later] = _verdict(row, "near-duplicate of", sim)
    return drops


def _signature(row: dict) -> np.ndarray:
    return np.frombuffer(row["signature"], dtype=np.uint32)


def _verdict(row: dict, what: str, sim: float | None) -> tuple[str, str]:
    leak = row["origin"] == "eval" and row["match_origin"] == "train"
    rule = "leakage" if leak else ("duplicate" if sim is None else "near_duplicate")
    where = f"{row['match_source']}:{row['match_row']}"
    detail = f" (similarity {sim:.2f})" if sim is not None else ""
    prefix = "eval example is a training example: " if leak else ""
    return rule, f"{prefix}{what} {where}{detail}"


def _exact_group(group):
    import pandas as pd

    if len(group) < 2:
        return pd.DataFrame(columns=[*_COLUMNS, *_MATCH])
    group = group.sort_values("order")
    first = group.iloc[0]
    later = group.iloc[1:].copy()
    for column in _COLUMNS:
        later[f"match_{column}"] = first[column]
    return later[[*_COLUMNS, *_MATCH]]


_MATCH = ["match_order", "match_origin", "match_source", "match_row"]


def _explode(row: dict) -> list[dict]:
    return [{"order": row["order"], "band_key": key} for key in row["band_keys"]]


def _candidate_pairs(group):
    """(later, earlier) for records sharing one LSH bucket, earlier ones capped."""
    import pandas as pd

    orders = sorted(int(o) for o in group["order"])
    pairs = [
        {"later": later, "earlier": earlier}
        for j, later in enumerate(orders)
        for earlier in orders[: min(j, MAX_BUCKET)]
    ]
    return pd.DataFrame(pairs, columns=["later", "earlier"])
