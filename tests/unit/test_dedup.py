"""Which record survives a conflict (same prompt, another completion) or a duplicate: the
per-partition blocks and the near-duplicate verdicts, on plain pandas (prepare runs them
inside Ray Data on large data, on the driver on small data; tests/integration/test_prepare.py
runs both through `ftray prepare`)."""

from __future__ import annotations

import json

import pandas as pd

from ftray.data.checks import exact_key, prompt_key
from ftray.data.dedup import _conflict_block, _exact_block, _near_drops, _on_driver
from ftray.data.sources import record_order
from ftray.spec.data import DedupSpec


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
    lost = _conflict_block(block).set_index("row")
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
    lost = _conflict_block(block)
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
    dropped = _exact_block(block).set_index("row")
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
            }
        )
    return pd.DataFrame(rows), precedence


def test_small_data_is_deduplicated_on_the_driver_by_every_rule():
    """What prepare runs below `dedup.driver_max_records`: the same block functions over one
    frame give each rule's verdict (test_prepare checks them through Ray Data too)."""
    near = "How long does it take for a new card to arrive in the post?"
    rows, precedence = _checked(
        ("train", 0, 1, 0, SKY, "blue"),
        ("train", 0, 2, 0, SKY.upper(), "blue"),  # the same text
        ("train", 0, 3, 0, "twice", "a"),
        ("train", 1, 1, 1, "twice", "b"),  # a correction, of a test example too
        ("eval", 2, 1, 0, "twice", "c"),
        ("train", 0, 4, 0, near, "card_arrival"),
        ("train", 0, 5, 0, near + " please", "card_arrival"),  # near the line before
        ("eval", 2, 2, 0, near + " now", "card_arrival"),  # near a training line: a leak
        ("train", 0, 6, 0, "nothing like the others at all", "x"),
    )
    drops, moves = _on_driver(rows, DedupSpec(), precedence)
    order = {(r["source"], r["row"]): r["order"] for r in rows.to_dict("records")}
    assert {
        (source, row): drops[order[source, row]][0]
        for source, row in order
        if order[source, row] in drops
    } == {
        ("train0.jsonl", 2): "duplicate",
        ("train0.jsonl", 3): "conflict",
        ("eval2.jsonl", 1): "conflict",
        ("train0.jsonl", 5): "near_duplicate",
        ("eval2.jsonl", 2): "leakage",
    }
    assert drops[order["train0.jsonl", 2]][1] == "same text as train0.jsonl:1"
    assert drops[order["train0.jsonl", 5]][1].startswith("near-duplicate of train0.jsonl:4 (")
    assert moves == {order["train1.jsonl", 1]: "eval"}, "the correction takes the test slot"
    assert _on_driver(rows.iloc[:0], DedupSpec(), precedence) == ({}, {})
    assert _on_driver(pd.DataFrame(), DedupSpec(), {}) == ({}, {}), "no rows: no columns"
