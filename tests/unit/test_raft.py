"""RAFT-style context selection (ftray.data.retrieval): gold forced, a deterministic share
without it, held-out examples given plain top-k."""

from __future__ import annotations

import pandas as pd
import pytest

from ftray.data.retrieval import drops_gold, is_gold, mode_of, retrieval_counts, select
from ftray.data.tally import Tally
from ftray.rag.context import Chunk, chunk_id
from ftray.spec import RetrievalDataSpec

DOCS = [
    ("fees.md", "The monthly account fee is 4 pounds for the Everyday account."),
    ("fees.md", "Overdraft interest is 19.9 percent a year, charged monthly."),
    ("cards.md", "A lost card is replaced within five working days, free of charge."),
    ("cards.md", "Contactless payments are limited to 100 pounds per payment."),
    ("branches.md", "Branches open at nine and close at five on weekdays."),
    ("loans.md", "Personal loans run from one to seven years."),
]


class WordOverlap:
    """A retriever over a handful of chunks: score = shared lowercase words with the query
    (a test double for the corpus index; it implements `ftray.rag.context.Retriever`)."""

    def __init__(self, docs: list[tuple[str, str]]):
        self.chunks = [Chunk(chunk_id(s, t), s, t) for s, t in docs]

    def search(self, query: str, k: int) -> list[Chunk]:
        words = set(query.lower().split())
        scored = [
            Chunk(c.id, c.source, c.text, float(len(words & set(c.text.lower().split()))))
            for c in self.chunks
        ]
        return sorted(scored, key=lambda c: (-c.score, c.id))[:k]


@pytest.fixture
def retriever() -> WordOverlap:
    return WordOverlap(DOCS)


def test_gold_in_top_k_is_kept_as_retrieved(retriever):
    chosen = select(retriever, "what is the monthly account fee", 2, "fees.md", "gold", 10)
    assert chosen.chunks == retriever.search("what is the monthly account fee", 2)
    assert chosen.gold_retrieved and chosen.gold_in_context


def test_gold_missed_by_retrieval_is_forced_in_for_the_lowest_distractor(retriever):
    query = "are branches open on weekdays and when is a card replaced"
    top = retriever.search(query, 2)
    assert not any(is_gold(c, "loans.md") for c in top)  # the case under test
    chosen = select(retriever, query, 2, "loans.md", "gold", 10)
    assert len(chosen.chunks) == 2
    assert chosen.chunks[0] == top[0]  # the best distractor stays
    assert [c.source for c in chosen.chunks if is_gold(c, "loans.md")] == ["loans.md"]
    assert not chosen.gold_retrieved and chosen.gold_in_context


def test_without_gold_shows_k_distractors(retriever):
    query = "what is the monthly account fee and overdraft interest"
    assert is_gold(retriever.search(query, 1)[0], "fees.md")
    chosen = select(retriever, query, 3, "fees.md", "without_gold", 10)
    assert len(chosen.chunks) == 3
    assert not any(is_gold(c, "fees.md") for c in chosen.chunks)
    assert chosen.gold_retrieved and not chosen.gold_in_context


def test_plain_mode_is_top_k_even_when_gold_is_known(retriever):
    query = "are branches open on weekdays"
    chosen = select(retriever, query, 2, "loans.md", "plain", 10)
    assert chosen.chunks == retriever.search(query, 2)
    assert not chosen.gold_retrieved and not chosen.gold_in_context


def test_held_out_and_unknown_gold_are_never_forced():
    spec = RetrievalDataSpec(gold_field="doc", p_without_gold=1.0)
    assert mode_of("eval", "fees.md", spec, 0, "q") == "plain"
    assert mode_of("validation", "fees.md", spec, 0, "q") == "plain"
    assert mode_of("train", None, spec, 0, "q") == "plain"
    assert mode_of("train", "fees.md", spec, 0, "q") == "without_gold"
    assert mode_of("train", "fees.md", spec.model_copy(update={"p_without_gold": 0}), 0, "q") == (
        "gold"
    )


def test_without_gold_share_is_deterministic_and_near_p():
    prompts = [f"question number {i} about fees" for i in range(2000)]
    drawn = [drops_gold(7, p, 0.2) for p in prompts]
    assert drawn == [drops_gold(7, p, 0.2) for p in prompts]  # same on every run
    assert 0.17 < sum(drawn) / len(drawn) < 0.23
    assert drawn != [drops_gold(8, p, 0.2) for p in prompts]  # the seed salts it
    assert drops_gold(7, "Question  number 1 about FEES", 0.2) == drawn[1]  # normalised


def test_gold_is_the_document_as_the_index_names_it():
    assert is_gold(Chunk("a", "fees.md", "x"), "fees.md")
    assert not is_gold(Chunk("a", "old/fees.md", "x"), "fees.md")
    assert not is_gold(Chunk("a", "faq.jsonl#3", "x"), "faq.jsonl")


def test_manifest_counts_gold_and_recall():
    table = pd.DataFrame(
        {
            "split": ["train", "train", "train", "eval", "eval", "quarantine"],
            "gold": ["a.md", "a.md", "", "b.md", "b.md", ""],
            "gold_retrieved": [True, False, False, True, False, False],
            "gold_in_context": [True, False, False, True, False, False],
        }
    )
    table = table.assign(order=range(len(table)), rule="", reason="", source="a", row=1, read=1)
    table = table.assign(num_tokens=3, pii_redacted=0, truncated=False)
    halves = Tally.of(table.iloc[:3]).add(Tally.of(table.iloc[3:]))  # as prepare adds blocks
    counts = retrieval_counts(halves, 3, "idx-1")
    assert counts["train"] == {
        "examples": 3,
        "gold_known": 2,
        "with_gold": 1,
        "without_gold": 1,
        "gold_recall_at_k": 0.5,
    }
    assert counts["eval"]["gold_recall_at_k"] == 0.5
    assert counts["validation"]["gold_recall_at_k"] is None
    assert (counts["index_id"], counts["k"]) == ("idx-1", 3)
