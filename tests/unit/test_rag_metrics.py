"""Retrieval recall@k, groundedness and citation accuracy on hand-made cases."""

from __future__ import annotations

import pytest

from ftray.evaluate.rag_metrics import (
    citation_accuracy,
    content_tokens,
    groundedness,
    retrieval_recall_at_k,
)
from ftray.rag.context import Chunk, chunk_id

FEES = Chunk(chunk_id("fees.md#0", "x"), "fees.md#0", "The Everyday account costs 4.50 a month.")
CARDS = Chunk(chunk_id("cards.md#0", "y"), "cards.md#0", "A lost card is replaced in 5 days.")


def test_recall_counts_only_examples_with_a_gold_document():
    retrieved = [[FEES, CARDS], [CARDS], [CARDS], [FEES]]
    golds = ["fees.md", "fees.md", None, "cards.md"]
    assert retrieval_recall_at_k(retrieved, golds) == pytest.approx(1 / 3)
    assert retrieval_recall_at_k([[FEES]], [None]) is None


def test_content_tokens_drop_stopwords_case_punctuation_and_citations():
    text = f"The fee IS 4.50, a month [{FEES.id}]."
    assert content_tokens(text) == ["fee", "4.50", "month"]


def test_groundedness_is_the_share_of_answer_tokens_in_the_chunks():
    # content tokens: everyday, account, costs, 4.50, month, overdraft → 5 of 6 in FEES
    answer = "The Everyday account costs 4.50 a month, overdraft"
    assert groundedness(answer, [FEES, CARDS]) == pytest.approx(5 / 6)
    assert groundedness("4.5 pounds", [FEES]) == 0.0  # another number is not grounded
    assert groundedness("It is what it is.", [FEES]) is None  # stopwords only: nothing to judge
    assert groundedness("costs", []) == 0.0


def test_citation_accuracy_is_the_share_of_cited_ids_that_were_given():
    stranger = chunk_id("other.md", "z")
    answer = f"4.50 a month [{FEES.id}], replaced in 5 days [{stranger}] [{FEES.id}]"
    assert citation_accuracy(answer, [FEES, CARDS]) == 0.5  # distinct ids: 1 of 2
    assert citation_accuracy(f"[{CARDS.id}]", [FEES, CARDS]) == 1.0
    assert citation_accuracy("no citation, [EMAIL] is not one", [FEES]) is None
