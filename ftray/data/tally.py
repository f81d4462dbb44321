"""What prepare counts, summed over the final dataset's blocks, off the driver.

Each block gives one small partial (`Tally.of`): per source file the number of lines, their
row numbers as runs of consecutive numbers (few: blocks keep the read order) and the splits
they landed in;
per rule the quarantined count and the three first rejections; the token lengths of kept
examples as a histogram; the PII and truncation counts; retrieval's gold counts per split.
The driver adds the partials (`Tally.add`); no record's columns reach it. A row number seen
twice (in one block, or in the runs of two) marks the file `doubled`; with the count of lines
landed against the lines read, the accounting tells any line lost or doubled on the way.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

COLUMNS = ["order", "split", "rule", "reason", "source", "row", "read", "num_tokens"]
COLUMNS += ["pii_redacted", "truncated"]
GOLD_COLUMNS = ["gold", "gold_retrieved", "gold_in_context"]
EXAMPLE_SPLITS = ("train", "validation", "eval")
SAMPLES_PER_RULE = 3


@dataclass
class Tally:
    files: dict[str, dict] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[dict]] = field(default_factory=dict)
    lengths: dict[int, int] = field(default_factory=dict)
    pii_redacted: int = 0
    truncated: int = 0
    gold: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def of(cls, block) -> Tally:
        """The partial of one block (pandas, `COLUMNS` and, with retrieval, `GOLD_COLUMNS`)."""
        files = {}
        for source, rows in block.groupby("source", sort=False):
            runs, doubled = _runs(rows["row"].to_numpy(dtype=np.int64))
            files[str(source)] = {
                "lines": len(rows),
                "runs": runs,
                "doubled": doubled,
                "read": sorted({int(n) for n in rows["read"]}),
                "splits": {str(k): int(n) for k, n in rows["split"].value_counts().items()},
            }
        quarantined = block[block["split"] == "quarantine"].sort_values("order")
        samples = {
            str(rule): [
                {"order": int(r.order), "source": r.source, "row": int(r.row), "reason": r.reason}
                for r in group.head(SAMPLES_PER_RULE).itertuples()
            ]
            for rule, group in quarantined.groupby("rule")
        }
        kept = block[block["split"].isin(EXAMPLE_SPLITS)]
        gold = {}
        if "gold" in block.columns:
            for split in EXAMPLE_SPLITS:
                rows = kept[kept["split"] == split]
                known = rows[rows["gold"] != ""]
                gold[split] = {
                    "examples": len(rows),
                    "gold_known": len(known),
                    "with_gold": int(known["gold_in_context"].astype(bool).sum()),
                    "retrieved": int(known["gold_retrieved"].astype(bool).sum()),
                }
        return cls(
            files=files,
            rules={str(k): int(n) for k, n in quarantined["rule"].value_counts().items()},
            samples=samples,
            lengths={int(k): int(n) for k, n in kept["num_tokens"].value_counts().items()},
            pii_redacted=int(kept["pii_redacted"].sum()),
            truncated=int(kept["truncated"].astype(bool).sum()),
            gold=gold,
        )

    def add(self, other: Tally) -> Tally:
        files = {path: dict(part) for path, part in self.files.items()}
        for path, part in other.files.items():
            mine = files.get(path)
            if mine is None:
                files[path] = dict(part)
                continue
            runs, doubled = _merge(mine["runs"] + part["runs"])
            files[path] = {
                "lines": mine["lines"] + part["lines"],
                "runs": runs,
                "doubled": doubled or mine["doubled"] or part["doubled"],
                "read": sorted(set(mine["read"]) | set(part["read"])),
                "splits": dict(Counter(mine["splits"]) + Counter(part["splits"])),
            }
        samples = {
            rule: sorted(
                self.samples.get(rule, []) + other.samples.get(rule, []),
                key=lambda s: s["order"],
            )[:SAMPLES_PER_RULE]
            for rule in {*self.samples, *other.samples}
        }
        gold = {
            split: {
                key: self.gold.get(split, {}).get(key, 0) + other.gold.get(split, {}).get(key, 0)
                for key in {*self.gold.get(split, {}), *other.gold.get(split, {})}
            }
            for split in {*self.gold, *other.gold}
        }
        return Tally(
            files=files,
            rules=dict(Counter(self.rules) + Counter(other.rules)),
            samples=samples,
            lengths=dict(Counter(self.lengths) + Counter(other.lengths)),
            pii_redacted=self.pii_redacted + other.pii_redacted,
            truncated=self.truncated + other.truncated,
            gold=gold,
        )

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Tally:
        fields = json.loads(text)
        fields["lengths"] = {int(k): n for k, n in fields["lengths"].items()}
        return cls(**fields)


def tally(final, retrieval: bool) -> Tally:
    """The whole dataset's tally: one partial per block, added on the driver."""
    columns = COLUMNS + (GOLD_COLUMNS if retrieval else [])
    partials = final.select_columns(columns).map_batches(_partial, batch_format="pandas")
    total = Tally()
    for row in partials.iter_rows():
        total = total.add(Tally.from_json(row["tally"]))
    return total


def _partial(block):
    import pandas as pd

    return pd.DataFrame({"tally": [Tally.of(block).to_json()]})


def _runs(rows: np.ndarray) -> tuple[list[list[int]], bool]:
    """Sorted row numbers as [first, last] runs of consecutive numbers, and whether any
    number repeats."""
    rows = np.sort(rows)
    steps = np.diff(rows)
    breaks = np.flatnonzero(steps > 1)
    starts = rows[np.concatenate([[0], breaks + 1])]
    ends = rows[np.concatenate([breaks, [len(rows) - 1]])]
    runs = [[int(a), int(b)] for a, b in zip(starts, ends, strict=True)]
    return runs, bool((steps == 0).any())


def _merge(runs: list[list[int]]) -> tuple[list[list[int]], bool]:
    """Runs from several blocks as one list of runs, and whether any two overlapped."""
    merged: list[list[int]] = []
    doubled = False
    for first, last in sorted(runs):
        if merged and first <= merged[-1][1]:
            doubled = True
            merged[-1][1] = max(merged[-1][1], last)
        elif merged and first == merged[-1][1] + 1:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    return merged, doubled


def lengths_array(lengths: dict[int, int], limit: int | None = None) -> np.ndarray:
    """The lengths as an ascending array; above `limit` entries, an evenly spaced sample of
    it (every k-th), which keeps the distribution."""
    values = np.array(sorted(lengths), dtype=np.int64)
    counts = np.array([lengths[v] for v in values], dtype=np.int64)
    total = int(counts.sum())
    if limit is None or total <= limit:
        return np.repeat(values, counts)
    picks = np.linspace(0, total - 1, limit).astype(np.int64)
    return values[np.searchsorted(np.cumsum(counts), picks, side="right")]
