"""What the training loop needs from whoever runs it, and the in-process implementation.

Ray Train provides a `WorkerContext` (`ftray.train.ray_train`); `LocalContext` runs the same
loop in one process (tests, a GPU box without Ray, torchrun).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np


class WorkerContext(Protocol):
    rank: int
    world_size: int
    node_id: str
    device: str

    def batches(self, split: str, batch_size: int, epoch: int) -> Iterable[dict]:
        """Raw examples, {"input_ids": [[...], ...], "labels": [[...], ...]} per batch (pairs
        add "rejected_input_ids" and "rejected_labels"), in the same order every time for the
        same epoch (resume skips what was consumed)."""
        ...

    def wrap_model(self, model, move: bool = True):
        """The model ready for data-parallel training (DDP), moved to `device` if `move`."""
        ...

    def restored(self) -> contextlib.AbstractContextManager[str | None]:
        """The latest checkpoint's folder when resuming, else None."""
        ...

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Metrics from every rank; a checkpoint folder from the ranks that wrote one."""
        ...


class LocalContext:
    """One process over a prepared dataset folder; checkpoints go to `checkpoint_root`.

    Resumes from the newest checkpoint already in `checkpoint_root`. `columns`: what a
    batch holds (`ftray.train.dpo.PAIR_COLUMNS` for preference pairs).
    """

    rank = 0
    world_size = 1
    node_id = "local"

    def __init__(
        self,
        dataset_dir: str,
        checkpoint_root: str,
        seed: int = 0,
        device="cpu",
        columns: tuple[str, ...] = ("input_ids", "labels"),
    ):
        self.dataset_dir = dataset_dir
        self.columns = list(columns)
        self.tables: dict[str, dict] = {}  # split → columns, read when first asked for
        self.checkpoint_root = Path(checkpoint_root)
        self.seed = seed
        self.device = device
        self.reports: list[dict] = []

    def batches(self, split: str, batch_size: int, epoch: int) -> Iterator[dict]:
        import pyarrow.parquet as pq

        if split not in self.tables:
            path = Path(self.dataset_dir, split)
            self.tables[split] = pq.read_table(path, columns=self.columns).to_pydict()
        table = self.tables[split]
        count = len(table["input_ids"])
        order = np.arange(count)
        if split == "train":
            order = np.random.default_rng(self.seed + epoch).permutation(count)
        for start in range(0, count, batch_size):
            picked = order[start : start + batch_size]
            yield {key: [table[key][i] for i in picked] for key in self.columns}

    def wrap_model(self, model, move: bool = True):
        return model.to(self.device) if move else model

    @contextlib.contextmanager
    def restored(self) -> Iterator[str | None]:
        found = self.checkpoints()
        yield str(found[-1]) if found else None

    def checkpoints(self) -> list[Path]:
        if not self.checkpoint_root.is_dir():
            return []
        return sorted(self.checkpoint_root.glob("checkpoint_*"))

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            target = self.checkpoint_root / f"checkpoint_{len(self.checkpoints()):06d}"
            shutil.copytree(checkpoint_dir, target)
            metrics = {**metrics, "checkpoint": str(target)}
        self.reports.append(metrics)


def all_reduce_sum(value):
    """`value` (a tensor) summed over workers; itself without torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather(value) -> list:
    """`value` from every rank, in rank order (just `[value]` without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
