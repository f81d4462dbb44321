"""Retrieval recall@k, groundedness and citation accuracy on hand-made cases."""

from __future__ import annotations

import json
from dataclasses import asdict

import pandas as pd
import pytest

from ftray.evaluate.rag_metrics import (
    citation_accuracy,
    content_tokens,
    format_compliance,
    groundedness,
    retrieval_arms,
    retrieval_recall_at_k,
)
from ftray.evaluate.score import Task
from ftray.rag.context import Chunk, chunk_id

FEES = Chunk(chunk_id("fees.md", "x"), "fees.md", "The Everyday account costs 4.50 a month.")
CARDS = Chunk(chunk_id("cards.md", "y"), "cards.md", "A lost card is replaced in 5 days.")


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


def test_retrieval_arms_score_each_arm_with_and_without_context():
    task = Task("generation", ["generation"], "rouge_l", None, None, 0.5)
    context = json.dumps([asdict(FEES)])
    shown = pd.DataFrame(
        {
            "completion": ["it costs 4.50", "it costs 4.50"],
            "context": [context, context],
            "candidate_output": ["it costs 4.50", f"costs 4.50 [{FEES.id}]"],
            "incumbent_output": ["no idea", "no idea"],
            **{f"{a}_prompt_tokens": [100, 120] for a in ("candidate", "incumbent")},
            **{f"{a}_latency_s": [0.2, 0.4] for a in ("candidate", "incumbent")},
        }
    )
    plain = shown.assign(candidate_output=["it costs 5", "it costs 5"], candidate_prompt_tokens=20)
    found = retrieval_arms(
        shown, plain, task, {"index_id": "i", "k": 1, "eval": {"gold_recall_at_k": 1.0}}
    )
    arms = found["arms"]
    assert arms["candidate+retrieval"]["score"] > arms["candidate"]["score"]
    assert arms["candidate+retrieval"]["groundedness"] == 1.0  # costs, 4.50 both in FEES
    assert arms["candidate+retrieval"]["citation_accuracy"] == 1.0  # one answer cites, rightly
    assert arms["incumbent+retrieval"]["groundedness"] == 0.0  # "idea" is not in FEES
    assert arms["incumbent+retrieval"]["citation_accuracy"] is None
    assert (arms["candidate"]["prompt_tokens"], arms["candidate+retrieval"]["prompt_tokens"]) == (
        20.0,
        110.0,
    )
    assert "groundedness" not in arms["candidate"]
    assert (found["metric"], found["gold_recall_at_k"]) == ("rouge_l", 1.0)
    assert [arms[a]["exact_match"] for a in arms] == [0.5, 0.0, 0.0]
    assert [arms[a]["format_compliance"] for a in arms] == [1.0, 1.0, 1.0]


def test_format_compliance_is_one_line_of_at_most_twice_the_references_words():
    assert format_compliance("4.50 QB$", "4.50 QB$")
    assert format_compliance("It costs 4.50 QB$", "4.50 QB$")  # 4 words <= 2 * 2 + 1
    assert not format_compliance("A replacement card costs 4.50 QB$ here", "4.50 QB$")
    assert not format_compliance("4.50 QB$\nAnything else?", "4.50 QB$")
    assert format_compliance("  4.50 QB$\n", "4.50 QB$")  # surrounding whitespace is fine


def test_evaluate_asks_with_the_chunks_and_keeps_the_question_alone(tmp_path):
    from ftray.artifacts import DatasetRef
    from ftray.evaluate.stage import _examples

    question = [{"role": "user", "content": "What is the fee?"}]
    (tmp_path / "eval").mkdir()
    pd.DataFrame(
        {
            "source": ["q.jsonl"],
            "row": [1],
            "prompt": ["What is the fee?"],
            "completion": ["4.50"],
            "messages": [json.dumps(question)],
            "context": [json.dumps([asdict(FEES)])],
        }
    ).to_parquet(tmp_path / "eval" / "part-0.parquet")
    dataset = DatasetRef("ds-1", str(tmp_path), {}, True)
    table = _examples(dataset, 10, retrieval=True)
    assert json.loads(table["plain_messages"][0]) == question
    asked = json.loads(table["messages"][0])[0]["content"]
    assert asked.startswith(f"Context:\n[{FEES.id}] (fees.md)") and "What is the fee?" in asked
    assert "plain_messages" not in _examples(dataset, 10)
