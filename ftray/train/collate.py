"""Batches of variable-length examples → tensors, padded or packed; packing a whole epoch.

Packing (`train.packing`) decides its rows over each worker's whole shard of an epoch
(`pack_epoch`, first-fit decreasing, as multipack samplers do), not within each micro-batch:
a micro-batch of eight short examples and one long one then no longer pads, nor packs, to the
long one's length.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ftray.data.tokenize import IGNORE_INDEX


def collate(batch: dict, pad_id: int = 0, pack_length: int | None = None, device="cpu") -> dict:
    """Tensors from a batch of variable-length `input_ids`/`labels`.

    Unpacked: one example per row, right-padded, with an attention mask. Packed
    (`pack_length`): examples laid end to end in rows of at most `pack_length` tokens (the
    rows `batch["rows"]` lists, as lists of example indices, e.g. from `pack_epoch`; else
    first-fit decreasing within the batch), with position ids restarting at 0 for each example
    and no attention mask, from which transformers builds a block-diagonal causal mask: no
    token attends across examples, and the loss equals the unpacked loss while padding mostly
    disappears. Call the model with `use_cache=False`: with a KV cache transformers skips the
    packed-sequence mask.
    """
    import torch

    ids = [np.asarray(x, dtype=np.int64) for x in batch["input_ids"]]
    labels = [np.asarray(x, dtype=np.int64) for x in batch["labels"]]
    if pack_length:
        layout = batch.get("rows") or first_fit_decreasing([len(x) for x in ids], pack_length)
    else:
        layout = [[i] for i in range(len(ids))]
    width = max(sum(len(ids[i]) for i in row) for row in layout)
    shape = (len(layout), width)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    label_ids = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    position_ids = np.tile(np.arange(width), (len(layout), 1))  # padding: a segment of its own
    attention = np.zeros(shape, dtype=np.int64)
    for r, row in enumerate(layout):
        start = 0
        for i in row:
            end = start + len(ids[i])
            input_ids[r, start:end] = ids[i]
            label_ids[r, start:end] = labels[i]
            position_ids[r, start:end] = np.arange(end - start)
            start = end
        attention[r, :start] = 1
    out = {"input_ids": input_ids, "labels": label_ids}
    if pack_length:
        out["position_ids"] = position_ids
    else:
        out["attention_mask"] = attention
    return {key: torch.from_numpy(value).to(device) for key, value in out.items()}


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each summing to at most `capacity`: longest items first, each
    into the first bin with room; items within a bin in their original order.

    A max-tree over the bins' free room finds that first bin in O(log n), so a shard of
    100k examples packs in seconds (a scan of the open bins would be quadratic).
    """
    size = 1
    while size < len(lengths):
        size *= 2
    room = [capacity] * (2 * size)  # leaves: bins (unopened ones empty); nodes: max below
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"an example of {need} tokens exceeds pack_length {capacity}")
        node = 1
        while node < size:
            node = 2 * node if room[2 * node] >= need else 2 * node + 1
        if node - size == len(bins):
            bins.append([])
        bins[node - size].append(i)
        room[node] -= need
        while node > 1:
            node //= 2
            room[node] = max(room[2 * node], room[2 * node + 1])
    return [sorted(b) for b in bins]


def pack_epoch(
    batches: Iterable[dict], pack_length: int, limit: int, seed: int, epoch: int
) -> list[dict]:
    """A worker's epoch of micro-batches, packed across the whole shard.

    Reads up to `limit` micro-batches from `batches` (the examples an unpacked epoch would
    train on), bins all their examples into rows of at most `pack_length` tokens by first-fit
    decreasing, shuffles the rows (seeded by `seed` and `epoch`: rows built from the longest
    examples would otherwise all come first) and deals them, in order, into as many
    micro-batches as were read, each a dict of its examples with `rows` for `collate`. The
    same input gives the same micro-batches, so a resumed run skips exactly what it consumed.
    """
    examples: dict[str, list] = {"input_ids": [], "labels": []}
    count = 0
    for raw in batches:
        if count == limit:
            break
        for key in examples:
            examples[key].extend(raw[key])
        count += 1
    if not count:
        return []
    lengths = [len(x) for x in examples["input_ids"]]
    micro_batches = []
    for picked in deal_rows(lengths, pack_length, count, seed, epoch):
        indices = [i for row in picked for i in row]
        at = {i: k for k, i in enumerate(indices)}
        micro_batches.append(
            {key: [values[i] for i in indices] for key, values in examples.items()}
            | {"rows": [[at[i] for i in row] for row in picked]}
        )
    return micro_batches


def deal_rows(
    lengths: list[int], pack_length: int, count: int, seed: int, epoch: int
) -> list[list[list[int]]]:
    """`count` micro-batches of packed rows (lists of example indices): first-fit decreasing
    bins, the fullest split while there are too few to go round, shuffled (seeded by `seed`
    and `epoch`: rows built from the longest examples would otherwise all come first) and
    dealt in order."""
    bins = first_fit_decreasing(lengths, pack_length)
    while len(bins) < count:
        largest = max(range(len(bins)), key=lambda b: (len(bins[b]), -b))
        half = len(bins[largest]) // 2
        bins[largest : largest + 1] = [bins[largest][:half], bins[largest][half:]]
    order = np.random.default_rng([seed, epoch]).permutation(len(bins))
    return [[bins[b] for b in part] for part in np.array_split(order, count)]
