"""The pairwise queue's data: an evaluation's pairs, each reviewer's order and A/B sides, and
the ratings under `evals/<eval-id>/reviews/pairwise/`.

Ratings are appended one JSON file each, named by time and a random suffix, so reviewers
writing at once (several app replicas on object storage too) never overwrite each other; a
reviewer who rates an item again adds a rating, and the latest one counts.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

from ftray.errors import UserError
from ftray.store import Store, event_id, utc_stamp

QUEUE = "pairwise"
CHOICES = ("A", "B", "tie", "both_bad")
COMMENT_LIMIT = 4000


@dataclass(frozen=True)
class Pair:
    """One held-out example with both arms' answers; `item` is its row in `outputs/`."""

    item: int
    source: str
    row: int
    prompt: str
    reference: str
    candidate: str
    incumbent: str


def latest_eval(store: Store) -> str:
    """The most recent finished evaluation of the project."""
    evals = store.manifests("evals")
    if not evals:
        raise UserError(
            f"no finished evaluation in {store.uri('evals')}; `ftray eval JOB.yaml` makes one."
        )
    return evals[-1]["eval_id"]


def eval_manifest(store: Store, eval_id: str) -> dict:
    """A finished evaluation's manifest; a clear error listing the finished ones otherwise."""
    if not store.is_complete("evals", eval_id):
        known = [m["eval_id"] for m in store.manifests("evals")] or ["(none yet)"]
        raise UserError(
            f"no finished evaluation {eval_id!r} in {store.uri('evals')}; finished: "
            f"{', '.join(known)}."
        )
    return store.manifest("evals", eval_id)


def load_pairs(store: Store, eval_id: str) -> list[Pair]:
    """Every example of an evaluation, in the order of its `outputs/` table."""
    import pyarrow.parquet as pq

    eval_manifest(store, eval_id)
    columns = ["source", "row", "prompt", "completion", "candidate_output", "incumbent_output"]
    pairs: list[Pair] = []
    for path in sorted(store.fs.glob(store.path("evals", eval_id, "outputs") + "/*.parquet")):
        with store.fs.open(path, "rb") as handle:
            table = pq.read_table(handle, columns=columns).to_pylist()
        pairs += [
            Pair(
                len(pairs) + i,
                str(r["source"]),
                int(r["row"]),
                str(r["prompt"]),
                str(r["completion"]),
                str(r["candidate_output"]),
                str(r["incumbent_output"]),
            )
            for i, r in enumerate(table)
        ]
    return pairs


def _draw(*parts) -> int:
    """A number fixed by `parts`: the same reviewer sees the same arrangement on every visit."""
    text = json.dumps(parts, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def reviewer_order(eval_id: str, reviewer: str, items: int) -> list[int]:
    """The items in the order this reviewer sees them: shuffled per reviewer, so position
    effects (fatigue, anchoring on the first pairs) spread over all items."""
    return sorted(range(items), key=lambda item: _draw(eval_id, reviewer, item, "order"))


def candidate_side(eval_id: str, item: int, reviewer: str) -> str:
    """'A' or 'B': where this reviewer sees the candidate's answer for `item`."""
    return "A" if _draw(eval_id, item, reviewer, "side") % 2 == 0 else "B"


def preferred(choice: str, side: str) -> str:
    """A choice on the page ('A', 'B', 'tie', 'both_bad') as the arm it favours."""
    if choice in ("tie", "both_bad"):
        return choice
    return "candidate" if choice == side else "incumbent"


def latest(ratings: list[dict]) -> list[dict]:
    """The last rating of each reviewer and item (`ratings` oldest first)."""
    last = {(r["reviewer"], r["item"]): r for r in ratings}
    return sorted(last.values(), key=lambda r: r["id"])


class RatingLog:
    """One evaluation's ratings; re-reads only files it has not seen (they never change)."""

    def __init__(self, store: Store, eval_id: str):
        self.store, self.eval_id = store, eval_id
        self._folder = ("evals", eval_id, "reviews", QUEUE)
        self._seen: dict[str, dict] = {}
        self._lock = threading.Lock()

    def add(self, pair: Pair, reviewer: str, choice: str, comment: str, position: int) -> dict:
        """Store one rating; the A/B side comes from the arrangement, never from the client."""
        side = candidate_side(self.eval_id, pair.item, reviewer)
        name = event_id()
        rating = {
            "id": name,
            "eval_id": self.eval_id,
            "queue": QUEUE,
            "item": pair.item,
            "source": pair.source,
            "row": pair.row,
            "reviewer": reviewer,
            "position": position,
            "candidate_side": side,
            "choice": choice,
            "preferred": preferred(choice, side),
            "comment": comment,
            "at": utc_stamp(),
        }
        self.store.write_json(rating, *self._folder, f"{name}.json")
        with self._lock:
            self._seen[f"{name}.json"] = rating
        return rating

    def all(self) -> list[dict]:
        """Every rating, oldest first."""
        folder = self.store.path(*self._folder)
        names = []
        if self.store.fs.exists(folder):
            names = [p.rsplit("/", 1)[-1] for p in self.store.fs.ls(folder, detail=False)]
        # `write_json` writes a temp name first; only finished `.json` files are ratings.
        new = [n for n in names if n.endswith(".json") and n not in self._seen]
        found = {n: self.store.read_json(*self._folder, n) for n in new}
        with self._lock:
            self._seen.update(found)
            return [self._seen[n] for n in sorted(self._seen)]
