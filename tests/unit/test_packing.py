"""Packing across a worker's shard: first-fit decreasing bins, dealt into micro-batches."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from ftray.train.collate import collate, first_fit_decreasing, pack_epoch


def test_first_fit_decreasing_places_the_longest_first():
    # 7 | 5 | 4, then 3 joins the 5, the 2s the 4 and the 1 the 7: three full bins
    bins = first_fit_decreasing([7, 5, 4, 3, 2, 2, 1], 8)
    assert bins == [[0, 6], [1, 3], [2, 4, 5]]


def test_first_fit_decreasing_uses_each_item_once_within_capacity():
    lengths = np.random.default_rng(0).integers(1, 300, 2000).tolist()
    bins = first_fit_decreasing(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    lower_bound = math.ceil(sum(lengths) / 512)
    assert len(bins) <= 1.02 * lower_bound + 1, (len(bins), lower_bound)


def test_an_example_longer_than_a_row_is_refused():
    with pytest.raises(ValueError, match="600 tokens exceeds pack_length 512"):
        first_fit_decreasing([10, 600], 512)


def _long_tailed_batches(n_batches: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(40), 1.0, n_batches * size), 4, 512).astype(int)
    examples = [list(range(1000 * k, 1000 * k + n)) for k, n in enumerate(lengths)]
    return [
        {"input_ids": examples[i : i + size], "labels": examples[i : i + size]}
        for i in range(0, len(examples), size)
    ]


def test_pack_epoch_trains_on_the_same_examples_with_far_less_padding():
    batches = _long_tailed_batches(12, 8)
    packed = pack_epoch(iter(batches), 512, limit=10, seed=0, epoch=0)
    assert len(packed) == 10, "as many micro-batches as an unpacked epoch: the same steps"
    seen = Counter(tuple(x) for mb in packed for x in mb["input_ids"])
    assert seen == Counter(tuple(x) for b in batches[:10] for x in b["input_ids"])
    padded = [collate(b) for b in batches[:10]]
    rows = [collate(mb, pack_length=512) for mb in packed]
    for mb, tensors in zip(packed, rows, strict=True):
        assert tensors["input_ids"].shape[0] == len(mb["rows"])
        assert tensors["input_ids"].shape[1] <= 512
    useful = sum(len(x) for b in batches[:10] for x in b["input_ids"])
    padded_cells = sum(t["input_ids"].numel() for t in padded)
    packed_cells = sum(t["input_ids"].numel() for t in rows)
    assert useful / packed_cells > 0.8 > 0.5 > useful / padded_cells


def test_pack_epoch_is_fixed_by_seed_and_epoch():
    batches = _long_tailed_batches(8, 4)

    def packed(seed, epoch):
        return pack_epoch(iter(batches), 256, limit=8, seed=seed, epoch=epoch)

    assert packed(0, 0) == packed(0, 0)
    assert packed(0, 0) != packed(0, 1), "each epoch deals its rows in another order"
    assert packed(0, 0) != packed(1, 0)


def test_too_few_rows_to_go_round_are_split():
    """Short examples may fit fewer rows than there are micro-batches: every one gets some."""
    batches = [{"input_ids": [[1, 2], [3]], "labels": [[1, 2], [3]]} for _ in range(3)]
    packed = pack_epoch(iter(batches), 100, limit=3, seed=0, epoch=0)
    assert len(packed) == 3 and all(mb["input_ids"] for mb in packed)
    assert sum(len(mb["input_ids"]) for mb in packed) == 6
