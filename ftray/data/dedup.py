"""Exact duplicates, conflicts and near-duplicates over a Ray Dataset, distributed by key.

Exact: records grouped by their normalised-text hash. Conflict: records grouped by their
normalised prompt (the chat before the answer, system prompt included); one completion per
prompt survives. Near: MinHash signatures cut into LSH bands; records sharing a band bucket
are candidates, confirmed by estimated Jaccard similarity. All are Ray Data shuffles by key,
so the work spreads over the cluster. Up to `dedup.driver_max_records` records the driver runs
the same rules on one pandas frame instead: the per-block functions below see every group
whole either way, so the verdicts are the same, without a dozen Ray Data stages of fixed cost.

Which record survives: the one whose source has the higher `precedence`; at equal
precedence, of duplicates the first (by source order: training sources before eval before
validation sources), of conflicting answers the last (a later source restates the answer:
corrections come after the data they correct). Every other record is reported with the
record that won. A duplicate across splits given as files is a leak (rule 'leakage'),
removed from the split that loses; a conflict's winner goes to the most held-out split of
the records it replaces (eval, then validation), so a test prompt never moves into training.
"""

from __future__ import annotations

import numpy as np

from ftray.data.checks import exact_key, prompt_key, similarity
from ftray.spec import DedupSpec

# A bucket this large means degenerate data (say, thousands of near-empty texts); compare its
# members with its first MAX_BUCKET records only, to keep the work linear.
MAX_BUCKET = 256
_COLUMNS = ["order", "origin", "source", "row", "precedence"]
# The columns of the checked records dedup reads.
_INPUT = [*_COLUMNS[:-1], "exact_key", "band_keys", "signature", "messages", "completion"]
_HELD_OUT = {"eval": 0, "validation": 1, "train": 2}  # rank: the most held-out split first


def find_duplicates(
    passing, spec: DedupSpec, num_rows: int, precedence: dict[str, int]
) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """(drops, moves): order → (rule, reason) for every record to drop, and order → split
    for conflict winners that take a held-out record's place. `passing` holds checked
    records; `precedence` maps each source file to its precedence.

    Each pass hash-partitions rows by key (`repartition(keys=...)`), so every group lies in
    one block, then handles whole blocks with vectorised pandas: per-group Python calls
    (`map_groups`) cost 145 s of 245 s at 100k records, most groups being singletons. One
    partition per 10k input rows (4 to 200).
    """
    if num_rows <= spec.driver_max_records:
        return _on_driver(passing.select_columns(_INPUT).to_pandas(), spec, precedence)
    parts = max(4, min(200, num_rows // 10_000))
    drops: dict[int, tuple[str, str]] = {}
    keyed = (
        passing.select_columns(_INPUT)
        .map_batches(_add_keys, fn_kwargs={"precedence": precedence}, batch_format="pandas")
        .materialize()
    )
    if keyed.count() == 0:  # counted when materialized: no pass over the data
        return drops, {}  # the shuffles below need rows to know their columns
    if spec.exact:
        rows = keyed.select_columns([*_COLUMNS, "exact_key"])
        later = _by_key(rows, "exact_key", parts, _exact_block)
        drops.update(_collect(later.map_batches(_verdicts, batch_format="pandas")))
    lost: dict[int, tuple[str, str]] = {}
    moves: dict[int, str] = {}
    if spec.conflicts:
        lost, moves = _conflicts(keyed, set(drops), parts)
        drops.update(lost)
    if spec.near:
        drops.update(_near(keyed, spec, set(drops), set(lost), parts))
    return drops, moves


def _add_keys(block, precedence: dict[str, int]):
    block["precedence"] = block["source"].map(precedence).astype("int64")
    block["prompt_key"] = [prompt_key(messages) for messages in block["messages"]]
    block["completion_key"] = [exact_key(completion) for completion in block["completion"]]
    return block.drop(columns=["messages", "completion"])


def _by_key(rows, key: str, parts: int, fn):
    return rows.repartition(parts, keys=[key]).map_batches(
        fn, batch_size=None, batch_format="pandas"
    )


def _conflicts(keyed, dropped: set[int], parts: int) -> tuple[dict, dict[int, str]]:
    """Records whose prompt is another's with a different completion, lost to the winner
    (drops), and the winners that move to a held-out split (moves); exact duplicates
    already dropped take no part."""
    rows = keyed.select_columns([*_COLUMNS, "prompt_key", "completion_key"])
    if dropped:
        rows = rows.map_batches(
            _without, fn_kwargs={"orders": sorted(dropped)}, batch_format="pandas"
        )
    return _conflict_outcomes(_by_key(rows, "prompt_key", parts, _conflict_block).iter_rows())


def _conflict_outcomes(losers) -> tuple[dict, dict[int, str]]:
    """(drops, moves) from the rows `_conflict_block` returns."""
    drops, moves = {}, {}
    for row in losers:
        drops[int(row["order"])] = _conflict_verdict(row)
        if row["winner_split"] != row["match_origin"]:
            moves[int(row["match_order"])] = row["winner_split"]
    return drops, moves


def _without(block, orders: list[int]):
    return block[~block["order"].isin(orders)]


def _conflict_block(block):
    """Within one hash partition: per prompt, every record whose completion is not the
    winner's (the last by precedence, then source order), with the winner and the split
    the winner goes to."""
    shared = block[block.duplicated("prompt_key", keep=False)].sort_values(["precedence", "order"])
    winners = shared.drop_duplicates("prompt_key", keep="last").set_index("prompt_key")
    losers = shared[shared["completion_key"] != shared["prompt_key"].map(winners["completion_key"])]
    losers = losers.copy()
    for column in _COLUMNS:
        losers[f"match_{column}"] = losers["prompt_key"].map(winners[column])
    rank = losers["origin"].map(_HELD_OUT).groupby(losers["prompt_key"]).min()
    rank = np.minimum(losers["prompt_key"].map(rank), losers["match_origin"].map(_HELD_OUT))
    names = {value: name for name, value in _HELD_OUT.items()}
    losers["winner_split"] = rank.map(names)
    return losers[[*_COLUMNS, *_MATCH, "winner_split"]]


def _conflict_verdict(row: dict) -> tuple[str, str]:
    where = f"{row['match_source']}:{row['match_row']}"
    ours, theirs = int(row["precedence"]), int(row["match_precedence"])
    why = f"precedence {theirs} > {ours}" if theirs > ours else "the later record"
    moved = row["winner_split"] != row["match_origin"]
    to = f"; it takes this example's place in {row['winner_split']}" if moved else ""
    return "conflict", f"same prompt as {where}, whose completion wins ({why}){to}"


def _near(keyed, spec: DedupSpec, dropped: set[int], lost: set[int], parts: int) -> dict:
    """Candidates from shared LSH buckets, verified where they lie; only matches return.

    The bucket shuffle carries ids only (a few per band per record). Each distinct candidate
    pair is then joined with both records' signatures (two hash joins, distributed like the
    shuffles) and its similarity computed in the workers, vectorised; the driver receives
    only the confirmed near-duplicates, the ones it must report anyway. Of a pair the record
    with the higher precedence (then the earlier) is kept; a pair with a conflict's loser
    (`lost`) is no pair: the conflict rule has decided between the two.
    """
    exploded = keyed.select_columns(["order", "band_keys"]).flat_map(_explode)
    pairs = _by_key(exploded, "band_key", parts, _pairs_block)
    pairs = _by_key(pairs, "later", parts, _distinct_pairs).materialize()
    if pairs.count() == 0:
        return {}  # no candidate pair (clean data): the joins need rows to know their columns
    records = keyed.select_columns([*_COLUMNS, "signature"])
    for side in ("later", "earlier"):
        renamed = records.rename_columns({c: f"{side}_{c}" for c in [*_COLUMNS, "signature"]})
        pairs = pairs.join(renamed, "inner", parts, on=(side,), right_on=(f"{side}_order",))
    matches = pairs.map_batches(
        _similar_block, fn_kwargs={"threshold": spec.threshold}, batch_format="pandas"
    )
    excluded = {"dropped": sorted(dropped), "lost": sorted(lost)}
    losers = matches.map_batches(_near_losers, fn_kwargs=excluded, batch_format="pandas")
    losers = losers.materialize()
    if losers.count() == 0:
        return {}  # nothing similar enough: the shuffle below needs rows to know its columns
    best = _by_key(losers, "order", parts, _best_match)
    return _collect(best.map_batches(_verdicts, batch_format="pandas"))


def _near_drops(matches, dropped: set[int], lost: set[int]) -> dict[int, tuple[str, str]]:
    """order → (rule, reason) from confirmed pairs (rows of `later_*`, `earlier_*` columns
    and `similarity`), in one process: what `_near` computes over the cluster."""
    import pandas as pd

    matches = pd.DataFrame(matches)
    if matches.empty:
        return {}
    losers = _near_losers(matches, sorted(dropped), sorted(lost))
    return _collect([_verdicts(_best_match(losers))])


def _on_driver(rows, spec: DedupSpec, precedence: dict[str, int]):
    """`find_duplicates` on a pandas frame of the passing records (`_INPUT` columns), in this
    process: each rule's block function applied to all the rows, one block holding every
    group, as the shuffles would give them."""
    import pandas as pd

    drops: dict[int, tuple[str, str]] = {}
    if rows.empty:  # Ray Data gives no columns for no rows
        return drops, {}
    keyed = _add_keys(rows, precedence)
    if spec.exact:
        drops.update(_collect([_verdicts(_exact_block(keyed[[*_COLUMNS, "exact_key"]]))]))
    lost: dict[int, tuple[str, str]] = {}
    moves: dict[int, str] = {}
    if spec.conflicts:
        rows = _without(keyed[[*_COLUMNS, "prompt_key", "completion_key"]], sorted(drops))
        lost, moves = _conflict_outcomes(_conflict_block(rows).to_dict("records"))
        drops.update(lost)
    if not spec.near:
        return drops, moves
    exploded = pd.DataFrame(
        [
            pair
            for row in keyed[["order", "band_keys"]].to_dict("records")
            for pair in _explode(row)
        ],
        columns=["order", "band_key"],
    )
    pairs = _distinct_pairs(_pairs_block(exploded))
    records = keyed[[*_COLUMNS, "signature"]]
    for side in ("later", "earlier"):
        renamed = records.rename(columns={c: f"{side}_{c}" for c in [*_COLUMNS, "signature"]})
        pairs = pairs.merge(renamed, left_on=side, right_on=f"{side}_order")
        pairs = pairs.drop(columns=[f"{side}_order"])  # the join keeps the left key only
    matches = _similar_block(pairs, spec.threshold)
    drops.update(_near_drops(matches, set(drops), set(lost)))
    return drops, moves


def _near_losers(block, dropped: list[int], lost: list[int]):
    """Each confirmed pair as the record that loses it (the lower precedence, then the
    later) and its `match_*` columns, but a pair with a record already dropped, or with a
    conflict's loser: the conflict rule has decided between the two."""
    import pandas as pd

    # the join keeps the left key: `later_order` / `earlier_order` are `later` / `earlier`
    later = {c: block["later" if c == "order" else f"later_{c}"] for c in _COLUMNS}
    earlier = {c: block["earlier" if c == "order" else f"earlier_{c}"] for c in _COLUMNS}
    flip = (block["later_precedence"] > block["earlier_precedence"]).to_numpy()
    out = pd.DataFrame(
        {
            **{c: np.where(flip, earlier[c], later[c]) for c in _COLUMNS},
            **{f"match_{c}": np.where(flip, later[c], earlier[c]) for c in _COLUMNS},
            "similarity": block["similarity"].to_numpy(),
        }
    )
    skip = out["order"].isin(dropped) | out["order"].isin(lost) | out["match_order"].isin(lost)
    return out[~skip]


def _best_match(block):
    """Within one hash partition of the losing records: for each, the pair it loses to the
    best record (the highest precedence, then the first)."""
    ranked = block.sort_values(
        ["order", "match_precedence", "match_order"], ascending=[True, False, True]
    )
    return ranked.drop_duplicates("order")


def _verdicts(block):
    """(order, rule, reason) of each losing record with its `match_*` columns (and the
    `similarity` of a near-duplicate)."""
    import pandas as pd

    near = "similarity" in block.columns
    what = "near-duplicate of" if near else "same text as"
    verdicts = [
        _verdict(row, what, float(row["similarity"]) if near else None)
        for row in block.to_dict("records")
    ]
    return pd.DataFrame(
        {
            "order": block["order"].astype("int64").to_numpy(),
            "rule": [rule for rule, _ in verdicts],
            "reason": [reason for _, reason in verdicts],
        }
    )


def _collect(verdicts) -> dict[int, tuple[str, str]]:
    """order → (rule, reason) from a dataset (or list of frames) of verdicts."""
    batches = verdicts if isinstance(verdicts, list) else verdicts.iter_batches(batch_size=None)
    return {
        int(order): (rule, reason)
        for batch in batches
        for order, rule, reason in zip(batch["order"], batch["rule"], batch["reason"], strict=True)
    }


def _distinct_pairs(block):
    """A pair found in several buckets is checked once (all of a `later` lie in one block)."""
    return block.drop_duplicates(["later", "earlier"])


def _similar_block(block, threshold: float):
    """Estimated Jaccard similarity of each pair's MinHash signatures; keep those ≥ threshold."""
    if block.empty:
        return block.assign(similarity=[])
    left = np.stack([np.frombuffer(s, dtype=np.uint32) for s in block["later_signature"]])
    right = np.stack([np.frombuffer(s, dtype=np.uint32) for s in block["earlier_signature"]])
    block = block.drop(columns=["later_signature", "earlier_signature"])
    block["similarity"] = similarity(left, right)
    return block[block["similarity"] >= threshold]


def _verdict(row: dict, what: str, sim: float | None) -> tuple[str, str]:
    # across splits given as files (training, eval, validation sources): a leak, removed from
    # the later split; carved splits are cut after dedup, so they cannot share a record
    leak = row["origin"] != row["match_origin"]
    rule = "leakage" if leak else ("duplicate" if sim is None else "near_duplicate")
    where = f"{row['match_source']}:{row['match_row']}"
    detail = f" (similarity {sim:.2f})" if sim is not None else ""
    names = {"train": "a training", "eval": "an eval", "validation": "a validation"}
    prefix = f"{row['origin']} example is {names[row['match_origin']]} example: " if leak else ""
    return rule, f"{prefix}{what} {where}{detail}"


_MATCH = [f"match_{column}" for column in _COLUMNS]


def _exact_block(block):
    """Within one hash partition: every record of a text but the one kept (the highest
    precedence, then the first), with the one kept."""
    repeated = block[block.duplicated("exact_key", keep=False)]
    repeated = repeated.sort_values(["precedence", "order"], ascending=[False, True])
    first = repeated.drop_duplicates("exact_key", keep="first").set_index("exact_key")
    later = repeated[repeated.duplicated("exact_key", keep="first")].copy()
    for column in _COLUMNS:
        later[f"match_{column}"] = later["exact_key"].map(first[column])
    return later[[*_COLUMNS, *_MATCH]]


def _explode(row: dict) -> list[dict]:
    return [{"order": row["order"], "band_key": key} for key in row["band_keys"]]


def _pairs_block(block):
    """(later, earlier) for records sharing an LSH bucket, earlier ones capped per record."""
    import pandas as pd

    shared = block[block.duplicated("band_key", keep=False)]
    pairs = []
    for _, orders in shared.groupby("band_key")["order"]:
        ranked = sorted(int(o) for o in orders)
        pairs += [
            (later, earlier)
            for j, later in enumerate(ranked)
            for earlier in ranked[: min(j, MAX_BUCKET)]
        ]
    # int64 even when empty: an empty block must still join with the int64 `order` column
    return pd.DataFrame(pairs, columns=["later", "earlier"], dtype="int64")
