"""The per-worker training loop, shared by every method and runnable without Ray.

`train_loop` takes a `WorkerContext`: Ray Train provides one (`ftray.train.ray_train`), and
`LocalContext` runs the same loop in one process (tests, GPU boxes without Ray, torchrun).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from ftray.data.tokenize import IGNORE_INDEX
from ftray.models import add_lora, load_model
from ftray.spec import TrainSpec


class WorkerContext(Protocol):
    """What the loop needs from whoever runs it."""

    rank: int
    world_size: int
    node_id: str
    device: str

    def batches(self, split: str, batch_size: int, epoch: int) -> Iterable[dict]:
        """Raw examples: {"input_ids": [[...], ...], "labels": [[...], ...]} per batch."""
        ...

    def wrap_model(self, model): ...

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None: ...


def train_loop(config: dict, ctx: WorkerContext) -> dict:
    """Train a LoRA adapter; report metrics every `log_every` steps and a checkpoint per epoch.

    `config` is plain data (it crosses the Ray boundary): `train` (a TrainSpec dump),
    `model_dir`, `dtype` and `steps_per_epoch` (equal on every worker, so none waits on a
    collective the others never reach).
    """
    import torch

    spec = TrainSpec.model_validate(config["train"])
    torch.manual_seed(spec.seed)
    model = ctx.wrap_model(add_lora(load_model(config["model_dir"], config["dtype"]), spec.lora))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = config["steps_per_epoch"]
    total = min(spec.max_steps or math.inf, steps_per_epoch * spec.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total, spec.warmup_ratio))
    per_worker = spec.batch_size // ctx.world_size
    pack = config.get("pack_length") if spec.packing else None
    nodes = _gather(ctx.node_id)  # where each rank ran, for the run's manifest

    step, history, started = 0, [], time.perf_counter()
    for epoch in range(spec.epochs):
        model.train()
        for index, raw in enumerate(ctx.batches("train", per_worker, epoch)):
            if index >= steps_per_epoch or step >= total:
                break
            batch = collate(raw, pack_length=pack, device=ctx.device)
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % spec.log_every == 0 or step in (1, total):
                mean_loss = _mean_across_workers(loss.detach())
                history.append([step, round(mean_loss, 5)])
                if ctx.rank == 0:
                    rate = step / (time.perf_counter() - started)
                    print(
                        f"  step {step}/{total}  loss {mean_loss:.4f}  ({rate:.2f} steps/s)",
                        flush=True,
                    )
        eval_loss = evaluate_loss(model, ctx, per_worker, pack)
        metrics = {
            "step": step,
            "epoch": epoch + 1,
            "loss": history[-1][1] if history else None,
            "eval_loss": eval_loss,
            "loss_history": history,
            "worker_nodes": nodes,
        }
        _report_with_adapter(model, ctx, metrics)
        if step >= total:
            break
    return metrics


def evaluate_loss(model, ctx: WorkerContext, batch_size: int, pack: int | None = None) -> float:
    """Mean per-token loss on the eval split, over all workers."""
    import torch

    model.eval()
    loss_sum, tokens = torch.zeros(()), torch.zeros(())
    with torch.no_grad():
        for raw in ctx.batches("eval", batch_size, 0):
            batch = collate(raw, pack_length=pack, device=ctx.device)
            count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
            loss_sum += model(**batch, use_cache=False).loss.float() * count
            tokens += count
    total = _sum_across_workers(torch.stack([loss_sum, tokens]))
    return round(float(total[0] / total[1]), 5) if total[1] else float("nan")


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


class LocalContext:
    """Run `train_loop` in this process over a prepared dataset folder; no Ray needed."""

    rank = 0
    world_size = 1
    node_id = "local"
    device = "cpu"

    def __init__(self, dataset_dir: str, checkpoint_root: str, seed: int = 0):
        import pyarrow.parquet as pq

        self.tables = {
            split: pq.read_table(Path(dataset_dir, split)).to_pydict()
            for split in ("train", "eval")
        }
        self.checkpoint_root = Path(checkpoint_root)
        self.seed = seed
        self.reports: list[dict] = []

    def batches(self, split: str, batch_size: int, epoch: int) -> Iterator[dict]:
        table = self.tables[split]
        order = np.random.default_rng(self.seed + epoch).permutation(len(table["input_ids"]))
        if split == "eval":
            order = np.arange(len(table["input_ids"]))
        for start in range(0, len(order), batch_size):
            picked = order[start : start + batch_size]
            yield {key: [table[key][i] for i in picked] for key in ("input_ids", "labels")}

    def wrap_model(self, model):
        return model

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            target = self.checkpoint_root / f"checkpoint_{len(self.reports):06d}"
            import shutil

            shutil.copytree(checkpoint_dir, target)
            metrics = {**metrics, "checkpoint": str(target)}
        self.reports.append(metrics)


def _report_with_adapter(model, ctx: WorkerContext, metrics: dict) -> None:
    if ctx.rank != 0:
        ctx.report(metrics, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        getattr(model, "module", model).save_pretrained(tmp)
        ctx.report(metrics, tmp)


def _schedule(total: float, warmup_ratio: float):
    warmup = max(1, int(total * warmup_ratio)) if warmup_ratio else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _sum_across_workers(value):
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def _gather(value) -> list:
    """`value` from every rank, in rank order (just `[value]` without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _mean_across_workers(value) -> float:
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return float(_sum_across_workers(value.float())) / world
