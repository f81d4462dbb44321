"""Pairwise ratings as training signal: each rated item's winner over its loser, written as a
preference source file for `train.method: dpo` (`ftray review pairs`), from an evaluation's
ratings or a shadow model's.

Per item, each reviewer's latest rating is one vote for the candidate or the incumbent ('tie'
and 'both bad' vote for neither); the arm with more votes is chosen, the other rejected, and
items with no votes or equal votes are dropped. Each line keeps its source (`eval_id`, or
`shadow_model`), item and `votes` ([for the winner, for either arm]) so a dataset can be traced
back to the ratings, and its weight, the reviewers' agreement: (votes for the winner - votes
for the loser) / votes for either arm, 1 when every vote that took a side agrees, near 0 for a
narrow split.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from ftray.review.ratings import Item, PairSource, RatingLog, latest
from ftray.spec import DataSpec
from ftray.store import Store


def rating_pairs(store: Store, source: PairSource) -> tuple[list[dict], dict]:
    """(pairs, counts): {prompt, chosen, rejected, <source>, item, votes, weight} per decided
    item, and how many items were rated, became pairs, or were dropped as ties."""
    examples = {pair.item: pair for pair in source.pairs()}
    votes: dict[Item, Counter] = {}
    for rating in latest(RatingLog(store, source).all()):
        votes.setdefault(rating["item"], Counter())[rating["preferred"]] += 1
    pairs = []
    for item, tally in sorted(votes.items()):
        candidate, incumbent = tally["candidate"], tally["incumbent"]
        if candidate == incumbent:
            continue  # a tie, both bad, or reviewers split evenly: no preference to learn
        example = examples[item]
        win, lose = (example.candidate, example.incumbent)
        if incumbent > candidate:
            win, lose = lose, win
        pairs.append(
            {
                "prompt": example.prompt,
                "chosen": win,
                "rejected": lose,
                **source.record,
                "item": item,
                "votes": [max(candidate, incumbent), candidate + incumbent],
                "weight": round(abs(candidate - incumbent) / (candidate + incumbent), 4),
            }
        )
    counts = {"items_rated": len(votes), "pairs": len(pairs), "ties": len(votes) - len(pairs)}
    return pairs, counts


def write_rating_pairs(data: DataSpec, store: Store, source: PairSource) -> dict:
    """Write a source's rated pairs as `<folder>/reviews/preferences-<hash>.jsonl`
    (`evals/<eval-id>/`, `shadows/<model-id>/`) in the job's field names (`data.prompt_field`,
    `data.preference`'s or chosen/rejected/weight; no weight where `weight_field` is null);
    returns the counts and the file's URI (None when no item has a winner)."""
    pairs, counts = rating_pairs(store, source)
    if not pairs:
        return {**counts, "path": None}
    chosen = data.preference.chosen_field if data.preference else "chosen"
    rejected = data.preference.rejected_field if data.preference else "rejected"
    weight = data.preference.weight_field if data.preference else "weight"
    lines = [
        json.dumps(
            {
                data.prompt_field: pair["prompt"],
                chosen: pair["chosen"],
                rejected: pair["rejected"],
                **{key: pair[key] for key in (*source.record, "item", "votes")},
                **({weight: pair["weight"]} if weight else {}),
            },
            sort_keys=True,
        )
        for pair in pairs
    ]
    body = "\n".join(lines) + "\n"
    name = f"preferences-{hashlib.sha256(body.encode()).hexdigest()[:12]}.jsonl"
    store.write_text(body, *source.folder, "reviews", name)
    return {**counts, "path": store.uri(*source.folder, "reviews", name)}
