"""The per-file accounting: lines read = train + validation + eval + quarantine + blank,
each line once."""

from __future__ import annotations

import pandas as pd
import pytest

from ftray.data.prepare import _accounts, _counts
from ftray.data.tally import Tally

SOURCES = [{"path": "a.jsonl", "format": "jsonl"}, {"path": "b.csv", "format": "csv"}]


def _table(rows, blocks: int = 1) -> Tally:
    """The tally of these rows, cut into `blocks` blocks and added as prepare adds them."""
    table = pd.DataFrame(rows, columns=["source", "row", "read", "split", "rule"])
    table = table.assign(order=range(len(table)), reason="", num_tokens=3)
    table = table.assign(pii_redacted=0, truncated=False)
    total = Tally()
    for block in range(blocks):
        total = total.add(Tally.of(table.iloc[block::blocks]))
    return total


GOOD = [
    ("a.jsonl", 1, 5, "train", ""),
    ("a.jsonl", 2, 5, "quarantine", "malformed"),
    ("a.jsonl", 3, 5, "blank", "blank"),
    ("a.jsonl", 4, 5, "eval", ""),
    ("a.jsonl", 5, 5, "validation", ""),
    ("b.csv", 2, 1, "train", ""),
]


@pytest.mark.parametrize("blocks", [1, 4])
def test_accounts_per_file_and_counts(blocks):
    table = _table(GOOD, blocks)
    first, second = _accounts(table, SOURCES)
    assert first == {
        "path": "a.jsonl",
        "format": "jsonl",
        "read": 5,
        "train": 1,
        "validation": 1,
        "eval": 1,
        "quarantine": 1,
        "blank": 1,
    }
    assert second["read"] == 1 and second["train"] == 1
    counts = _counts(table)
    assert counts["read"] == 6 and counts["input"] == 5 and counts["blank"] == 1
    assert (counts["train"], counts["validation"], counts["eval"]) == (2, 1, 1)
    assert counts["quarantine_by_rule"] == {"malformed": 1}


@pytest.mark.parametrize(
    "rows",
    [
        GOOD[1:],  # line 1 lost
        [*GOOD, ("a.jsonl", 4, 5, "train", "")],  # line 4 twice
        [GOOD[0], ("a.jsonl", 1, 5, "quarantine", "x"), *GOOD[2:]],  # 1 twice, 2 lost
    ],
    ids=["lost", "doubled", "doubled_and_lost"],
)
def test_a_lost_or_doubled_line_fails_the_stage(rows):
    with pytest.raises(RuntimeError, match="lost or doubled"):
        _accounts(_table(rows, 2), SOURCES)
