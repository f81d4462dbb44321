"""The pairwise queue's data: the pairs to rate (a source: an evaluation's, `EvalPairs`, or a
shadow model's, `ftray.review.shadow_pairs.ShadowPairs`), each reviewer's order and A/B sides,
and the ratings under `<source folder>/reviews/pairwise/`.

Ratings are appended one JSON file each, named by time and a random suffix, so reviewers
writing at once (several app replicas on object storage too) never overwrite each other; a
reviewer who rates an item again adds a rating, and the latest one counts. A rating names its
pair by the source's item key, which never changes while the source grows, and maps the
reviewer's A/B choice back to the arms: 'candidate' (an evaluation's candidate, a shadow
model) or 'incumbent' (the incumbent, production).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ftray.errors import UserError
from ftray.store import Store, event_id, utc_stamp

QUEUE = "pairwise"
CHOICES = ("A", "B", "tie", "both_bad")
COMMENT_LIMIT = 4000

Item = int | str


@dataclass(frozen=True)
class Pair:
    """One input with both arms' answers. `item` names it in its source for good (an
    evaluation's row number in `outputs/`, a shadow pair's production response id); `origin`
    is what a rating records of it besides (an evaluation row's source file and row)."""

    item: Item
    prompt: str
    candidate: str
    incumbent: str
    reference: str | None = None
    origin: dict = field(default_factory=dict)


class PairSource(Protocol):
    """What a pairwise queue reviews, and where its ratings go."""

    key: str  # salts each reviewer's order and A/B sides
    folder: tuple[str, ...]  # the store folder whose `reviews/` holds the ratings
    record: dict  # what every rating and preference line names the source by
    what: str  # the source for people
    arms: tuple[str, str]  # the arms for people: the candidate's name, the incumbent's

    def pairs(self) -> list[Pair]: ...


class EvalPairs:
    """An evaluation's pairs: the candidate's and the incumbent's answers to its held-out
    examples (`evals/<eval-id>/outputs/`)."""

    arms = ("candidate", "incumbent")

    def __init__(self, store: Store, eval_id: str):
        self.store, self.eval_id = store, eval_id
        self.key = eval_id  # the arrangements reviewers saw before shadows could be reviewed
        self.folder: tuple[str, ...] = ("evals", eval_id)
        self.record = {"eval_id": eval_id}
        self.what = f"evaluation {eval_id}"
        self._pairs: list[Pair] | None = None

    def pairs(self) -> list[Pair]:
        """Every example, in the order of the `outputs/` table; read once (it never changes)."""
        if self._pairs is None:
            self._pairs = self._read()
        return self._pairs

    def _read(self) -> list[Pair]:
        import pyarrow.parquet as pq

        eval_manifest(self.store, self.eval_id)
        columns = ["source", "row", "prompt", "completion", "candidate_output", "incumbent_output"]
        folder = self.store.path("evals", self.eval_id, "outputs")
        pairs: list[Pair] = []
        for path in sorted(self.store.fs.glob(folder + "/*.parquet")):
            with self.store.fs.open(path, "rb") as handle:
                table = pq.read_table(handle, columns=columns).to_pylist()
            pairs += [
                Pair(
                    len(pairs) + i,
                    str(r["prompt"]),
                    str(r["candidate_output"]),
                    str(r["incumbent_output"]),
                    str(r["completion"]),
                    {"source": str(r["source"]), "row": int(r["row"])},
                )
                for i, r in enumerate(table)
            ]
        return pairs


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


def _draw(*parts) -> int:
    """A number fixed by `parts`: the same reviewer sees the same arrangement on every visit."""
    text = json.dumps(parts, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def reviewer_order(key: str, reviewer: str, items: Iterable[Item]) -> list[Item]:
    """The items in the order this reviewer sees them: shuffled per reviewer, so position
    effects (fatigue, anchoring on the first pairs) spread over all items. Each item's place
    is drawn on its own, so items added later fall in between and never reorder the others."""
    return sorted(items, key=lambda item: _draw(key, reviewer, item, "order"))


def candidate_side(key: str, item: Item, reviewer: str) -> str:
    """'A' or 'B': where this reviewer sees the candidate's answer for `item`."""
    return "A" if _draw(key, item, reviewer, "side") % 2 == 0 else "B"


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
    """A source's ratings; re-reads only files it has not seen (they never change)."""

    def __init__(self, store: Store, source: PairSource):
        self.store, self.source = store, source
        self._folder = (*source.folder, "reviews", QUEUE)
        self._seen: dict[str, dict] = {}
        self._lock = threading.Lock()

    def add(self, pair: Pair, reviewer: str, choice: str, comment: str, position: int) -> dict:
        """Store one rating; the A/B side comes from the arrangement, never from the client."""
        side = candidate_side(self.source.key, pair.item, reviewer)
        name = event_id()
        rating = {
            "id": name,
            **self.source.record,
            "queue": QUEUE,
            "item": pair.item,
            **pair.origin,
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
