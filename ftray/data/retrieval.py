"""Retrieved context in prepared examples (RAFT-style): which chunks each example is shown.

A training example whose gold document is known gets its top-k chunks with that document's
best chunk forced in (replacing the lowest-ranked distractor when retrieval missed it), except
a deterministic `p_without_gold` share that gets k distractors and no gold chunk: the model
learns to use the right chunk and to answer when retrieval fails (Zhang et al., RAFT, 2024).
Validation and eval examples get plain top-k retrieval, what serving will see.

`AddContext` runs in Ray Data actors after the split is known (the index opened once per
actor): it re-tokenizes each example with its context through `with_context`, the one way
chunks enter a prompt, and records the chunks per example.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

from ftray.data.records import CheckRecords, Reject
from ftray.rag.context import Chunk, Retriever, last_question, with_context
from ftray.spec import RetrievalDataSpec

# what `AddContext` adds to every row; `context` is the chunks as JSON, for evaluation arms
CONTEXT_COLUMNS = ["context", "context_ids", "gold", "gold_retrieved", "gold_in_context"]
_EXAMPLES = ("train", "validation", "eval")

Mode = Literal["plain", "gold", "without_gold"]


@dataclass(frozen=True)
class Selection:
    """The chunks an example is shown, and what they say about its gold document.

    Attributes:
        chunks: best first (by the retriever's score).
        gold_retrieved: plain top-k retrieval found a chunk of the gold document (recall@k).
        gold_in_context: `chunks` hold a chunk of the gold document.
    """

    chunks: list[Chunk]
    gold_retrieved: bool
    gold_in_context: bool


def is_gold(chunk: Chunk, gold: str) -> bool:
    """Whether `chunk` comes from document `gold` (its source, as the index names it)."""
    return chunk.source == gold


def drops_gold(seed: int, prompt: str, share: float) -> bool:
    """Whether a training example is one of the `share` shown no gold chunk: a hash of the
    seed and the prompt, so the same example is chosen on every run."""
    key = f"{seed}:raft:{' '.join(prompt.lower().split())}"
    draw = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return draw < share


def select(
    retriever: Retriever, query: str, k: int, gold: str | None, mode: Mode, depth: int
) -> Selection:
    """The k chunks for one example: top-k (`plain`), top-k with the gold document's best
    chunk in it (`gold`), or the best k chunks of other documents (`without_gold`); `depth`
    is how far down the ranking the gold chunk (or distractors) are looked for."""
    top = retriever.search(query, k)
    if not gold:
        return Selection(top, False, False)
    retrieved = any(is_gold(c, gold) for c in top)
    chunks = top
    if mode == "gold" and not retrieved:
        best = next((c for c in retriever.search(query, depth) if is_gold(c, gold)), None)
        if best is not None:
            kept = top[: k - 1] if len(top) >= k else top
            chunks = sorted([*kept, best], key=lambda c: -c.score)
    elif mode == "without_gold" and retrieved:
        deeper = retriever.search(query, max(depth, k))
        chunks = [c for c in deeper if not is_gold(c, gold)][:k]
    return Selection(chunks, retrieved, any(is_gold(c, gold) for c in chunks))


def mode_of(split: str, gold: str | None, spec: RetrievalDataSpec, seed: int, prompt: str) -> Mode:
    """Training examples with a gold document are forced (or, for the drop share, denied)
    their gold chunk; everything else gets what serving would retrieve."""
    if split != "train" or not gold:
        return "plain"
    return "without_gold" if drops_gold(seed, prompt, spec.p_without_gold) else "gold"


class AddContext:
    """Per actor: the index and the tokenizer once; per batch: every example with its chunks,
    re-tokenized (over `max_seq_len` it is quarantined, rule too_long, or truncated)."""

    def __init__(
        self,
        data: dict,
        model_dir: str,
        chat_template: str | None,
        storage: str,
        project: str,
        index_id: str,
    ):
        from ftray.rag.index import open_index
        from ftray.store import Store

        self.records = CheckRecords(data, model_dir, chat_template)
        self.spec = self.records.spec
        assert self.spec.retrieval is not None
        self.retrieval = self.spec.retrieval
        self.retriever = open_index(Store(storage, project), index_id)

    def __call__(self, batch):
        import pandas as pd

        return pd.DataFrame([self.one(row) for row in batch.to_dict("records")])

    def one(self, row: dict) -> dict:
        """One row with its context columns (empty outside the example splits)."""
        row = {**row, "context": "[]", "context_ids": [], "gold": "", "gold_retrieved": False}
        row["gold_in_context"] = False
        if row["split"] not in _EXAMPLES:
            return row
        settings = self.retrieval
        gold = self._gold(row["fields"])
        messages = json.loads(row["messages"])
        query = last_question(messages)
        mode = mode_of(row["split"], gold, settings, self.spec.seed, row["prompt"])
        chosen = select(self.retriever, query, settings.k, gold, mode, settings.gold_search_k)
        row.update(
            context=json.dumps([asdict(c) for c in chosen.chunks]),
            context_ids=[c.id for c in chosen.chunks],
            gold=gold or "",
            gold_retrieved=chosen.gold_retrieved,
            gold_in_context=chosen.gold_in_context,
        )
        scratch = {"prompt": row["prompt"], "truncated": False}
        try:
            _, tokens = self.records.fit(
                with_context(messages, chosen.chunks), row["completion"], scratch
            )
        except Reject as reject:
            return {**row, "split": "quarantine", "rule": reject.rule, "reason": reject.reason}
        return {
            **row,
            "input_ids": tokens["input_ids"],
            "labels": tokens["labels"],
            "num_tokens": len(tokens["input_ids"]),
            "truncated": bool(row["truncated"] or scratch["truncated"]),
        }

    def _gold(self, fields: str) -> str | None:
        name = self.retrieval.gold_field
        value = json.loads(fields).get(name) if name else None
        if value is None:
            return None
        return str(value).strip() or None


def retrieval_counts(tally, k: int, index_id: str) -> dict:
    """The manifest's retrieval section, from prepare's `Tally`: per example split, how many
    examples know their gold document, hold a gold chunk, and retrieval's own gold
    recall@k."""
    counts: dict = {"index_id": index_id, "k": k}
    for split in _EXAMPLES:
        gold = tally.gold.get(split) or {"examples": 0, "gold_known": 0}
        known = gold["gold_known"]
        counts[split] = {
            "examples": gold["examples"],
            "gold_known": known,
            "with_gold": gold.get("with_gold", 0),
            "without_gold": known - gold.get("with_gold", 0),
            "gold_recall_at_k": round(gold["retrieved"] / known, 4) if known else None,
        }
    return counts
