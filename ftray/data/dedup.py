"""The rules for exact duplicates, conflicts and near-duplicates, on pandas frames of the
groups one key owns (`shards` routes every group whole to one shard).

Exact: records grouped by their normalised-text hash. Conflict: records grouped by their
normalised prompt (the chat before the answer, system prompt included); one completion per
prompt survives. Near: MinHash signatures cut into LSH bands; records sharing a band bucket
are candidates, confirmed by estimated Jaccard similarity.

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

from ftray.data.checks import similarity

# A bucket this large means degenerate data (say, thousands of near-empty texts); compare its
# members with its first MAX_BUCKET records only, to keep the work linear.
MAX_BUCKET = 256
# Pairs compared at once: two 128 MiB copies of their signatures at num_perm 128.
SIMILARITY_CHUNK = 1 << 18
COLUMNS = ["order", "origin", "source", "row", "precedence"]
HELD_OUT = {"eval": 0, "validation": 1, "train": 2}  # rank: the most held-out split first


def conflict_block(block):
    """Within one hash partition: per prompt, every record whose completion is not the
    winner's (the last by precedence, then source order), with the winner and the split
    the winner goes to."""
    shared = block[block.duplicated("prompt_key", keep=False)].sort_values(["precedence", "order"])
    winners = shared.drop_duplicates("prompt_key", keep="last").set_index("prompt_key")
    losers = shared[shared["completion_key"] != shared["prompt_key"].map(winners["completion_key"])]
    losers = losers.copy()
    for column in COLUMNS:
        losers[f"match_{column}"] = losers["prompt_key"].map(winners[column])
    rank = losers["origin"].map(HELD_OUT).groupby(losers["prompt_key"]).min()
    rank = np.minimum(losers["prompt_key"].map(rank), losers["match_origin"].map(HELD_OUT))
    names = {value: name for name, value in HELD_OUT.items()}
    losers["winner_split"] = rank.map(names)
    return losers[[*COLUMNS, *MATCH, "winner_split"]]


def conflict_verdict(row: dict) -> tuple[str, str]:
    """(rule, reason) of a record losing a conflict (a row of `conflict_block`)."""
    where = f"{row['match_source']}:{row['match_row']}"
    ours, theirs = int(row["precedence"]), int(row["match_precedence"])
    why = f"precedence {theirs} > {ours}" if theirs > ours else "the later record"
    moved = row["winner_split"] != row["match_origin"]
    to = f"; it takes this example's place in {row['winner_split']}" if moved else ""
    return "conflict", f"same prompt as {where}, whose completion wins ({why}){to}"


def near_losers(block, dropped, lost):
    """Each confirmed pair as the record that loses it (the lower precedence, then the
    later) and its `match_*` columns, but a pair with a record already dropped, or with a
    conflict's loser: the conflict rule has decided between the two."""
    import pandas as pd

    # the join keeps the left key: `later_order` / `earlier_order` are `later` / `earlier`
    later = {c: block["later" if c == "order" else f"later_{c}"] for c in COLUMNS}
    earlier = {c: block["earlier" if c == "order" else f"earlier_{c}"] for c in COLUMNS}
    flip = (block["later_precedence"] > block["earlier_precedence"]).to_numpy()
    out = pd.DataFrame(
        {
            **{c: np.where(flip, earlier[c], later[c]) for c in COLUMNS},
            **{f"match_{c}": np.where(flip, later[c], earlier[c]) for c in COLUMNS},
            "similarity": block["similarity"].to_numpy(),
        }
    )
    skip = out["order"].isin(dropped) | out["order"].isin(lost) | out["match_order"].isin(lost)
    return out[~skip]


def best_match(block):
    """Within one hash partition of the losing records: for each, the pair it loses to the
    best record (the highest precedence, then the first)."""
    ranked = block.sort_values(
        ["order", "match_precedence", "match_order"], ascending=[True, False, True]
    )
    return ranked.drop_duplicates("order")


def verdicts(block):
    """(order, rule, reason) of each losing record with its `match_*` columns (and the
    `similarity` of a near-duplicate)."""
    import pandas as pd

    near = "similarity" in block.columns
    what = "near-duplicate of" if near else "same text as"
    verdicts = [
        verdict(row, what, float(row["similarity"]) if near else None)
        for row in block.to_dict("records")
    ]
    return pd.DataFrame(
        {
            "order": block["order"].astype("int64").to_numpy(),
            "rule": [rule for rule, _ in verdicts],
            "reason": [reason for _, reason in verdicts],
        }
    )


def distinct_pairs(block):
    """A pair found in several buckets is checked once (all of a `later` lie in one block)."""
    return block.drop_duplicates(["later", "earlier"])


def signature_matrix(signatures, num_perm: int) -> np.ndarray:
    """MinHash signatures (bytes, uint32 × num_perm each) stacked as rows."""
    return np.frombuffer(b"".join(signatures), dtype=np.uint32).reshape(-1, num_perm)


def pair_similarity(left: np.ndarray, left_at, right: np.ndarray, right_at) -> np.ndarray:
    """Estimated Jaccard similarity of pair i: row `left_at[i]` of `left` with row
    `right_at[i]` of `right` (signature matrices holding each record once), SIMILARITY_CHUNK
    pairs at a time: a pair's signatures are never copied for all pairs at once."""
    out = np.empty(len(left_at))
    for start in range(0, len(left_at), SIMILARITY_CHUNK):
        at = slice(start, start + SIMILARITY_CHUNK)
        out[at] = similarity(left[left_at[at]], right[right_at[at]])
    return out


def verdict(row: dict, what: str, sim: float | None) -> tuple[str, str]:
    """(rule, reason) of a duplicate (`sim` None) or near-duplicate with its match."""
    # across splits given as files (training, eval, validation sources): a leak, removed from
    # the later split; carved splits are cut after dedup, so they cannot share a record
    leak = row["origin"] != row["match_origin"]
    rule = "leakage" if leak else ("duplicate" if sim is None else "near_duplicate")
    where = f"{row['match_source']}:{row['match_row']}"
    detail = f" (similarity {sim:.2f})" if sim is not None else ""
    names = {"train": "a training", "eval": "an eval", "validation": "a validation"}
    prefix = f"{row['origin']} example is {names[row['match_origin']]} example: " if leak else ""
    return rule, f"{prefix}{what} {where}{detail}"


MATCH = [f"match_{column}" for column in COLUMNS]


def exact_block(block):
    """Within one hash partition: every record of a text but the one kept (the highest
    precedence, then the first), with the one kept."""
    repeated = block[block.duplicated("exact_key", keep=False)]
    repeated = repeated.sort_values(["precedence", "order"], ascending=[False, True])
    first = repeated.drop_duplicates("exact_key", keep="first").set_index("exact_key")
    later = repeated[repeated.duplicated("exact_key", keep="first")].copy()
    for column in COLUMNS:
        later[f"match_{column}"] = later["exact_key"].map(first[column])
    return later[[*COLUMNS, *MATCH]]


def pairs_block(block):
    """(later, earlier) for records sharing an LSH bucket: each record with every earlier one
    in its bucket, up to the bucket's first MAX_BUCKET (vectorised: one merge, no loop over
    buckets)."""
    import pandas as pd

    shared = block[block.duplicated("band_key", keep=False)].sort_values(["band_key", "order"])
    shared = shared.assign(rank=shared.groupby("band_key").cumcount())
    first = shared[shared["rank"] < MAX_BUCKET]
    pairs = shared.merge(first, on="band_key", suffixes=("", "_earlier"))
    pairs = pairs[pairs["rank_earlier"] < pairs["rank"]]
    # int64 even when empty: an empty block must still join with the int64 `order` column
    return pd.DataFrame(
        {"later": pairs["order"].to_numpy(), "earlier": pairs["order_earlier"].to_numpy()},
        dtype="int64",
    )
