"""Batches of variable-length examples → tensors, padded or packed."""

from __future__ import annotations

from ftray.data.tokenize import IGNORE_INDEX


def collate(batch: dict, pad_id: int = 0, pack_length: int | None = None, device="cpu") -> dict:
    """Tensors from a batch of variable-length `input_ids`/`labels`.

    Unpacked: one example per row, right-padded, with an attention mask. Packed
    (`pack_length`): examples laid end to end in rows of at most `pack_length` tokens, with
    position ids restarting at 0 for each example and no attention mask, from which
    transformers builds a block-diagonal causal mask: no token attends across examples, and
    the loss equals the unpacked loss while padding mostly disappears. Call the model with
    `use_cache=False`: with a KV cache transformers skips the packed-sequence mask.
    """
    import torch

    rows = [[int(t) for t in ids] for ids in batch["input_ids"]]
    labels = [[int(t) for t in lab] for lab in batch["labels"]]
    positions = [list(range(len(r))) for r in rows]
    if pack_length:
        rows, labels, positions = _pack(rows, labels, pack_length)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.arange(width).repeat(len(rows), 1)  # padding: a segment of its own
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab, pos) in enumerate(zip(rows, labels, positions, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        label_ids[i, : len(lab)] = torch.tensor(lab)
        position_ids[i, : len(pos)] = torch.tensor(pos)
        attention[i, : len(ids)] = 1
    out = {"input_ids": input_ids, "labels": label_ids}
    if pack_length:
        out["position_ids"] = position_ids
    else:
        out["attention_mask"] = attention
    return {key: value.to(device) for key, value in out.items()}


def _pack(rows: list[list[int]], labels: list[list[int]], limit: int):
    """First-fit: each example goes into the first row with room for it."""
    packed: list[tuple[list[int], list[int], list[int]]] = []
    for ids, lab in zip(rows, labels, strict=True):
        for row in packed:
            if len(row[0]) + len(ids) <= limit:
                break
        else:
            row = ([], [], [])
            packed.append(row)
        row[0].extend(ids)
        row[1].extend(lab)
        row[2].extend(range(len(ids)))
    return [r[0] for r in packed], [r[1] for r in packed], [r[2] for r in packed]
