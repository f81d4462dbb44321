"""Which record survives a conflict (same prompt, another completion) or a duplicate: the
rules' block functions on plain pandas, and every round of the key-owning shards run in this
process (`LocalPool`) with one shard and with three, which must agree
(tests/integration/test_prepare.py runs them as Ray actors through `ftray prepare`)."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from ftray.data.checks import exact_key, prompt_key
from ftray.data.dedup import best_match, conflict_block, exact_block, near_losers, verdicts
from ftray.data.shards import LocalPool, outcomes, route, run_rounds
from ftray.data.sources import record_order
from ftray.spec.data import DataSpec, DedupSpec


def _chat(prompt: str, system: str | None = None) -> str:
    turns = [{"role": "system", "content": system}] if system else []
    return json.dumps([*turns, {"role": "user", "content": prompt}])


def _rows(*records) -> pd.DataFrame:
    """(origin, file index, row, precedence, prompt, completion) → the keyed columns."""
    rows = []
    for origin, index, row, precedence, prompt, completion in records:
        rows.append(
            {
                "order": record_order(origin, index, row),
                "origin": origin,
                "source": f"{origin}{index}.jsonl",
                "row": row,
                "precedence": precedence,
                "prompt_key": prompt_key(_chat(prompt)),
                "completion_key": exact_key(completion),
                "exact_key": exact_key(f"{prompt}\n{completion}"),
            }
        )
    return pd.DataFrame(rows)


SKY = "Which colour is the flag flown over the harbour at noon?"


def test_prompt_key_normalises_like_exact_dedup_and_includes_the_system_prompt():
    assert prompt_key(_chat(SKY)) == prompt_key(_chat(SKY.upper().replace("?", " ! ")))
    assert prompt_key(_chat(SKY)) != prompt_key(_chat(SKY, system="Answer in French."))
    assert prompt_key(_chat(SKY, "a")) == prompt_key(_chat(SKY, "A."))


def test_a_correction_wins_by_precedence_and_a_later_source_at_equal_precedence():
    block = _rows(
        ("train", 0, 7, 0, SKY, "red"),
        ("train", 1, 3, 0, SKY, "green"),  # a later file: beats row 7 at equal precedence
        ("train", 2, 1, 5, SKY.lower(), "blue"),  # the corrections file
        ("train", 0, 9, 0, "another prompt", "red"),
        ("train", 0, 2, 0, "twice", "a"),
        ("train", 0, 4, 0, "twice", "b"),  # the later line wins within a file
        ("train", 0, 5, 0, "same answer", "x"),
        ("train", 1, 5, 0, "same answer", "x"),  # a duplicate, not a conflict
    )
    lost = conflict_block(block).set_index("row")
    assert sorted(zip(lost["source"], lost.index, strict=True)) == [
        ("train0.jsonl", 2),
        ("train0.jsonl", 7),
        ("train1.jsonl", 3),
    ]
    assert set(lost.loc[[7, 3], "match_source"]) == {"train2.jsonl"}
    assert lost.loc[2, "match_row"] == 4
    assert set(lost["winner_split"]) == {"train"}


def test_a_correction_of_a_test_example_goes_to_the_test_set_not_to_training():
    block = _rows(
        ("train", 0, 1, 0, SKY, "red"),
        ("eval", 1, 1, 0, SKY, "red"),
        ("validation", 2, 1, 0, SKY, "red"),
        ("train", 3, 1, 1, SKY, "blue"),  # the correction
        ("train", 0, 2, 0, "held out", "a"),
        ("validation", 2, 2, 0, "held out", "b"),  # a validation file beats training
    )
    lost = conflict_block(block)
    sky = lost[lost["match_source"] == "train3.jsonl"]
    assert sorted(sky["origin"]) == ["eval", "train", "validation"]
    assert set(sky["winner_split"]) == {"eval"}, "the test set keeps the prompt, corrected"
    (held,) = lost[lost["match_source"] == "validation2.jsonl"].to_dict("records")
    assert (held["origin"], held["winner_split"]) == ("train", "validation")


def test_of_exact_duplicates_the_higher_precedence_is_kept():
    block = _rows(
        ("train", 0, 1, 0, SKY, "blue"),
        ("train", 1, 1, 2, SKY, "blue"),
        ("train", 0, 2, 0, "plain", "a"),
        ("train", 0, 3, 0, "plain", "a"),
    )
    dropped = exact_block(block).set_index("row")
    assert list(zip(dropped["source"], dropped.index, strict=True)) == [
        ("train0.jsonl", 1),
        ("train0.jsonl", 3),
    ]
    assert list(dropped["match_source"]) == ["train1.jsonl", "train0.jsonl"]


def _pair(later: tuple, earlier: tuple, similarity: float = 0.9) -> dict:
    """A confirmed near pair; each side (origin, index, row, precedence)."""
    row: dict = {"similarity": similarity}
    for side, (origin, index, number, precedence) in (("later", later), ("earlier", earlier)):
        order = record_order(origin, index, number)
        row[side] = order
        row.update(
            {
                f"{side}_origin": origin,
                f"{side}_source": f"{origin}{index}.jsonl",
                f"{side}_row": number,
                f"{side}_precedence": precedence,
            }
        )
    return row


def _near_drops(pairs: list[dict], dropped: set[int], lost: set[int]) -> dict:
    """order → (rule, reason) from confirmed pairs, as the shards' last near rounds decide."""
    losers = near_losers(pd.DataFrame(pairs), sorted(dropped), sorted(lost))
    found = verdicts(best_match(losers))
    rows = zip(found["order"], found["rule"], found["reason"], strict=True)
    return {order: (rule, reason) for order, rule, reason in rows}


def test_near_duplicates_keep_the_higher_precedence_and_leave_conflicts_alone():
    old, fix = ("train", 0, 1, 0), ("train", 1, 1, 1)
    other, third = ("train", 0, 2, 0), ("train", 0, 3, 0)
    test = ("eval", 2, 1, 0)
    drops = _near_drops(
        [_pair(fix, other), _pair(third, other), _pair(test, fix), _pair(fix, old)],
        dropped=set(),
        lost={record_order(*old[:3])},
    )
    assert drops == {
        record_order(*other[:3]): (
            "near_duplicate",
            "near-duplicate of train1.jsonl:1 (similarity 0.90)",
        ),
        record_order(*third[:3]): (
            "near_duplicate",
            "near-duplicate of train0.jsonl:2 (similarity 0.90)",
        ),
        record_order(*test[:3]): (
            "leakage",
            "eval example is a training example: near-duplicate of train1.jsonl:1 "
            "(similarity 0.90)",
        ),
    }
    assert record_order(*fix[:3]) not in drops, "a correction never loses to what it corrects"


def _checked(*records) -> pd.DataFrame:
    """(origin, file index, row, precedence, prompt, completion) → the checked records' columns
    dedup reads, keyed as `CheckRecords` keys them; and the precedence per source."""
    from ftray.data.checks import band_keys, lsh_bands, minhash

    spec = DedupSpec()
    rows, precedence = [], {}
    for origin, index, row, rank, prompt, completion in records:
        text = f"{prompt}\n{completion}"
        signature = minhash(text, spec.num_perm, spec.shingle)
        source = f"{origin}{index}.jsonl"
        precedence[source] = rank
        rows.append(
            {
                "order": record_order(origin, index, row),
                "origin": origin,
                "source": source,
                "row": row,
                "exact_key": exact_key(text),
                "band_keys": band_keys(signature, *lsh_bands(spec.num_perm, spec.threshold)),
                "signature": signature.tobytes(),
                "messages": _chat(prompt),
                "completion": completion,
                "prompt": prompt,
            }
        )
    return pd.DataFrame(rows), precedence


def _decide(rows: pd.DataFrame, precedence: dict, shards: int, **data) -> pd.DataFrame:
    """Every round on `shards` shards in this process: each record's outcome by order."""
    spec = DataSpec(sources=[{"path": "train0.jsonl"}], **data)
    pool = LocalPool(spec, shards)
    if len(rows):
        for start in range(0, len(rows), 4):  # batches, as Ray Data hands them to `route`
            route(rows.iloc[start : start + 4], pool, spec.model_dump(mode="json"), precedence)
    run_rounds(pool, spec)
    found = outcomes(pool, rows["order"].to_numpy() if len(rows) else [])
    return found.set_index("order").sort_index()


NEAR = "How long does it take for a new card to arrive in the post?"
EVERY_RULE = (
    ("train", 0, 1, 0, SKY, "blue"),
    ("train", 0, 2, 0, SKY.upper(), "blue"),  # the same text
    ("train", 0, 3, 0, "twice", "a"),
    ("train", 1, 1, 1, "twice", "b"),  # a correction, of a test example too
    ("eval", 2, 1, 0, "twice", "c"),
    ("train", 0, 4, 0, NEAR, "card_arrival"),
    ("train", 0, 5, 0, NEAR + " please", "card_arrival"),  # near the line before
    ("eval", 2, 2, 0, NEAR + " now", "card_arrival"),  # near a training line: a leak
    ("train", 0, 6, 0, "nothing like the others at all", "x"),
)


@pytest.mark.parametrize("shards", [1, 3])
def test_every_rule_on_the_shards(shards):
    rows, precedence = _checked(*EVERY_RULE)
    found = _decide(rows, precedence, shards)
    order = {(r["source"], r["row"]): r["order"] for r in rows.to_dict("records")}
    rules = {key: found.loc[o, "rule"] for key, o in order.items() if found.loc[o, "rule"]}
    assert rules == {
        ("train0.jsonl", 2): "duplicate",
        ("train0.jsonl", 3): "conflict",
        ("eval2.jsonl", 1): "conflict",
        ("train0.jsonl", 5): "near_duplicate",
        ("eval2.jsonl", 2): "leakage",
    }
    assert found.loc[order["train0.jsonl", 2], "reason"] == "same text as train0.jsonl:1"
    assert found.loc[order["train0.jsonl", 5], "reason"].startswith(
        "near-duplicate of train0.jsonl:4 ("
    )
    assert found.loc[order["train1.jsonl", 1], "split"] == "eval", "the correction takes its slot"
    assert found.equals(_decide(rows, precedence, 1)), "the shards' count changes nothing"
    assert _decide(rows.iloc[:0], precedence, shards).empty
    assert _decide(pd.DataFrame(), {}, shards).empty, "no rows: no columns"


@pytest.mark.parametrize("shards", [1, 2, 5])
def test_the_held_out_split_is_exact_per_label_whatever_the_shards(shards):
    """Per label the lowest-ranked 20% go to eval, then 25% of the rest to validation, the same
    records on any number of shards; a record dropped or moved by a rule is not ranked."""

    def prompt(row: int) -> str:  # texts far apart: no near-duplicates
        return hashlib.sha256(str(row).encode()).hexdigest()

    records = [
        ("train", 0, row, 0, prompt(row), label)
        for label in ("a", "b", "c")
        for row in range(1 + 100 * ord(label), 21 + 100 * ord(label))
    ]
    records.append(("train", 0, 1, 0, prompt(1 + 100 * ord("a")), "b"))  # loses a conflict
    rows, precedence = _checked(*records)
    found = _decide(
        rows,
        precedence,
        shards,
        labels=["a", "b", "c"],
        eval_fraction=0.2,
        validation_fraction=0.25,
    )
    found = found.join(rows.set_index("order")["completion"])
    counts = found.groupby(["completion", "split"]).size().to_dict()
    for label in "abc":
        assert (counts[label, "eval"], counts[label, "validation"]) == (4, 4)
    assert found.equals(
        _decide(
            rows, precedence, 1, labels=["a", "b", "c"], eval_fraction=0.2, validation_fraction=0.25
        ).join(rows.set_index("order")["completion"])
    )


def test_candidate_pairs_pair_each_record_with_the_earlier_ones_of_its_buckets_capped():
    from ftray.data.dedup import MAX_BUCKET, pairs_block

    big = [("big", order) for order in range(1000, 1000 + MAX_BUCKET + 44)]
    block = pd.DataFrame(
        [*big, ("small", 7), ("small", 3), ("small", 5), ("alone", 9)],
        columns=["band_key", "order"],
    )
    pairs = set(map(tuple, pairs_block(block).to_numpy().tolist()))
    ranked = [order for _, order in big]
    expected = {(5, 3), (7, 3), (7, 5)}
    expected |= {(later, earlier) for j, later in enumerate(ranked) for earlier in ranked[:j]}
    expected = {(a, b) for a, b in expected if b < 1000 or b < 1000 + MAX_BUCKET}
    assert pairs == expected
    assert len(pairs) == 3 + MAX_BUCKET * (MAX_BUCKET - 1) // 2 + 44 * MAX_BUCKET
    assert pairs_block(block.iloc[:0]).dtypes.tolist() == ["int64", "int64"]


def test_pair_similarity_in_chunks_equals_every_pair_at_once(monkeypatch):
    """Signatures are held once per record and compared a chunk of pairs at a time (a 1M-line
    prepare once built a 2 GiB column of per-pair signatures and failed)."""
    import numpy as np

    from ftray.data import dedup
    from ftray.data.checks import similarity

    rng = np.random.default_rng(0)
    left, right = rng.integers(0, 4, (7, 16), dtype=np.uint32), rng.integers(0, 4, (5, 16))
    left_at, right_at = rng.integers(0, 7, 40), rng.integers(0, 5, 40)
    expected = similarity(left[left_at], right[right_at.astype(int)])
    monkeypatch.setattr(dedup, "SIMILARITY_CHUNK", 3)
    assert np.array_equal(dedup.pair_similarity(left, left_at, right, right_at), expected)
    stacked = dedup.signature_matrix([row.tobytes() for row in left], 16)
    assert np.array_equal(stacked, left)
    assert dedup.signature_matrix([], 16).shape == (0, 16)

    rows, precedence = _checked(*EVERY_RULE)
    monkeypatch.setattr(dedup, "SIMILARITY_CHUNK", 1)
    chunked = _decide(rows, precedence, 3)
    monkeypatch.undo()
    assert (chunked["rule"] == "near_duplicate").sum() == 1
    assert chunked.equals(_decide(rows, precedence, 3))
