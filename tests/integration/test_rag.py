"""Retrieval + fine-tuning data: `ftray index`, then `ftray prepare` with data.retrieval puts
retrieved chunks (RAFT-style) into every example, with their ids and the gold counts; `ftray
assess` scores the base model with and without them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ftray.data.retrieval import drops_gold
from ftray.data.tokenize import messages_for, tokenize_example
from ftray.models import load_tokenizer
from ftray.rag.context import Chunk, with_context
from ftray.rag.index import open_index
from ftray.store import Store

ROOT = Path(__file__).resolve().parents[2]
K, P_WITHOUT_GOLD, SEED = 2, 0.3, 0
EVERY = 4  # the slice: every 4th question of jobs/rag (46 of 183, over every document)


def _job(folder: Path) -> tuple[Path, str]:
    """jobs/rag.yaml on the tiny model, its whole corpus and a slice of its questions."""
    lines = (ROOT / "jobs" / "rag" / "questions.jsonl").read_text().splitlines()
    (folder / "questions.jsonl").write_text("\n".join(lines[::EVERY]) + "\n")
    spec = yaml.safe_load((ROOT / "jobs" / "rag.yaml").read_text())
    spec.update(storage=str(folder / "store"), model={"base": "tiny"})
    spec["index"]["sources"] = [str(ROOT / "jobs" / "rag" / "docs")]
    spec["data"].update(
        sources=[{"path": str(folder / "questions.jsonl")}],
        max_seq_len=2048,
        seed=SEED,
        num_workers=1,
        retrieval={"k": K, "gold_field": "gold_source", "p_without_gold": P_WITHOUT_GOLD},
    )
    spec["assess"] = {"min_examples": 10, "few_shot": 1}
    spec["eval"] = {"max_new_tokens": 8}
    job = folder / "rag.yaml"
    job.write_text(yaml.safe_dump(spec))
    return job, spec["data"]["system_prompt"]


def test_prepare_puts_retrieved_chunks_in_every_example(tmp_path, run_cli):
    job, system = _job(tmp_path)
    run_cli("index", str(job))
    run_cli("prepare", str(job))
    store = Store(str(tmp_path / "store"), "rag")
    (manifest,) = store.manifests("datasets")
    retriever = open_index(store)
    counts = manifest["retrieval"]
    assert (counts["index_id"], counts["k"]) == (retriever.index_id, K)
    folder = tmp_path / "store" / "rag" / "datasets" / manifest["dataset_id"]
    splits = {s: pq.read_table(folder / s).to_pandas() for s in ("train", "validation", "eval")}
    tokenizer = load_tokenizer(manifest["model_dir"], None)

    train = splits["train"]
    for row in train.itertuples():
        chunks = [Chunk(**c) for c in json.loads(row.context)]
        assert list(row.context_ids) == [c.id for c in chunks] and len(chunks) == K
        # the RAFT share: the gold chunk is in every training example but the hashed share
        assert row.gold_in_context == (not drops_gold(SEED, row.prompt, P_WITHOUT_GOLD))
        assert any(c.source == row.gold for c in chunks) == row.gold_in_context
        # the tokens are the question with its context, as with_context puts it
        question = messages_for(row.prompt, system)
        assert json.loads(row.messages) == question  # the question alone
        asked = with_context(question, chunks)
        expected = tokenize_example(tokenizer, asked, row.completion)["input_ids"]
        assert list(row.input_ids) == expected
    dropped = (~train["gold_in_context"]).sum()
    assert 0 < dropped < len(train)
    assert counts["train"] == {
        "examples": len(train),
        "gold_known": len(train),
        "with_gold": len(train) - dropped,
        "without_gold": dropped,
        "gold_recall_at_k": round(float(train["gold_retrieved"].mean()), 4),
    }

    # held-out examples see what serving would retrieve: plain top-k, never forced
    for split in ("validation", "eval"):
        held = splits[split]
        assert len(held) and counts[split]["examples"] == len(held)
        for row in held.itertuples():
            assert list(row.context_ids) == [c.id for c in retriever.search(row.prompt, K)]
            assert row.gold_in_context == row.gold_retrieved
        recall = round(float(held["gold_retrieved"].mean()), 4)
        assert counts[split]["gold_recall_at_k"] == recall
    # the questions name their products: hybrid retrieval finds most gold documents
    assert counts["eval"]["gold_recall_at_k"] >= 0.5

    # assess: the prompted base model again, asked with the held-out examples' chunks
    run_cli("assess", str(job))
    (assessment,) = store.manifests("assessments")
    plain, rag = assessment["baseline"], assessment["baseline"]["retrieval"]
    assert rag["examples"] == plain["examples"] == len(splits["eval"])
    assert (rag["metric"], rag["index_id"]) == (plain["metric"], retriever.index_id)
    assert 0 <= rag["score"] <= 1
    # the untrained tiny model may answer no word at all: then there is nothing to judge
    assert rag["groundedness"] is None or 0 <= rag["groundedness"] <= 1
    # k chunks of up to 160 words each make every request longer
    prompt_tokens = assessment["serving"]["prompted_base"]["prompt_tokens"]
    assert rag["prompt_tokens"] > prompt_tokens + K * 50 and rag["latency_s"] > 0
    # the tuned model, trained with retrieval, is costed with its chunks in the prompt too
    assert assessment["serving"]["tuned"]["prompt_tokens"] > K * 50


# Slow tier (`make test-slow`): the same slice prepared again without data.retrieval, then
# assessed (about 2 min); its parts are in `make test`: the index, assess's retrieval arm on
# the dataset's chunks above, the decision rule in tests/unit/test_assess.py.
@pytest.mark.slow
def test_assess_searches_the_index_itself_without_data_retrieval(tmp_path, run_cli):
    """A job with an index but no data.retrieval: assess searches the newest index
    (assess.retrieval_k chunks per question) for the base + retrieval arm."""
    job, _ = _job(tmp_path)
    run_cli("index", str(job))
    store = Store(str(tmp_path / "store"), "rag")
    retriever = open_index(store)
    run_cli("assess", str(job), "--set", "data.retrieval=null", "--set", "assess.retrieval_k=2")
    (searched,) = store.manifests("assessments")
    plain, rag = searched["baseline"], searched["baseline"]["retrieval"]
    assert (rag["index_id"], rag["k"], rag["examples"]) == (
        retriever.index_id,
        2,
        plain["examples"],
    )
    assert rag["prompt_tokens"] > searched["serving"]["prompted_base"]["prompt_tokens"] + 2 * 50
    # the tuned model, trained without retrieval, is costed without chunks
    assert searched["serving"]["tuned"]["prompt_tokens"] < rag["prompt_tokens"] - 2 * 50
