"""The per-worker training loop, one copy for every method, runnable without Ray.

`train_loop(config, ctx)` trains `config.train.method` through an engine from
`ftray.train.methods`, on batches from a `WorkerContext` (`ftray.train.context`). It logs
metrics every `log_every` steps, measures the loss on the validation split (never the eval
split, which is the test set; for dpo the DPO loss and the preference accuracy) and saves a
checkpoint every `eval_every` steps (or per epoch), scores a sweep trial's task probe there
too, stops early when validation loss plateaus, and resumes exactly from the context's
restored checkpoint: step, epoch and position in the epoch's data, optimizer and scheduler
state, early-stopping state, and the dropout seed (derived from the step).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftray.data.tokenize import IGNORE_INDEX
from ftray.spec import EarlyStoppingSpec, TrainSpec
from ftray.train.collate import collate, pack_epoch
from ftray.train.config import FaultConfig, LoopConfig
from ftray.train.context import WorkerContext, all_reduce_sum, gather
from ftray.train.dpo import collate_pairs, evaluate_pairs
from ftray.train.methods import build_engine
from ftray.train.tracking import Meter, Tracker
from ftray.train.warm import local_copy

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Everything but the weights and optimizer that a resumed run needs."""

    step: int = 0
    epoch: int = 0
    micro_index: int = 0  # micro-batches of `epoch` already consumed
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    last_checkpoint_step: int | None = None
    loss_history: list = field(default_factory=list)  # [step, mean loss]
    eval_history: list = field(default_factory=list)  # [step, validation loss]
    task_history: list = field(default_factory=list)  # [step, probe's task metric]
    accuracy_history: list = field(default_factory=list)  # dpo: [step, preference accuracy]
    best_task_metric: float | None = None
    best_task_step: int | None = None
    resumed_from: list = field(default_factory=list)  # steps of the checkpoints resumed

    def record_eval(self, eval_loss: float, rule: EarlyStoppingSpec) -> None:
        self.eval_history.append([self.step, eval_loss])
        if self.best_eval_loss is None or eval_loss < self.best_eval_loss - rule.min_delta:
            self.best_eval_loss, self.best_step = eval_loss, self.step
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        if rule.patience and self.evals_without_improvement >= rule.patience:
            self.stopped_early = True

    def record_task(self, score: float | None) -> None:
        self.task_history.append([self.step, score])
        if score is not None and (self.best_task_metric is None or score > self.best_task_metric):
            self.best_task_metric, self.best_task_step = score, self.step

    def save(self, folder: str) -> None:
        Path(folder, STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, folder: str) -> TrainState:
        return cls(**json.loads(Path(folder, STATE_FILE).read_text()))


def train_loop(config: LoopConfig | dict, ctx: WorkerContext) -> dict:
    """Train; return the final metrics (the same on every rank).

    `config` arrives as plain data across the Ray boundary and is validated again here.
    """
    import torch

    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    config = LoopConfig.model_validate(config)
    spec = config.train
    total, steps_per_epoch = config.total_steps, config.steps_per_epoch
    torch.manual_seed(spec.seed)
    with local_copy(config.init_weights) as parent:
        engine = build_engine(
            spec, config.model_dir, config.dtype, ctx, total, parent, config.attention
        )
    try:
        state = TrainState()
        with ctx.restored() as folder:
            if folder:
                engine.load(folder)
                state = TrainState.load(folder)
                state.resumed_from.append(state.step)
        trial = config.trial or {}
        run_config = {"run_id": config.run_id, **trial, **spec.model_dump(mode="json")}
        tracker = Tracker(config.wandb, ctx.rank, run_config)
        meter = Meter(ctx.device, engine.flops_per_token, ctx.world_size)
        nodes = gather(ctx.node_id)
        micro, accumulation = spec.per_worker_batch, spec.accumulation
        pack = config.pack_length if spec.packing else None
        probe = _Probe(config) if config.probe else None
        micro_per_epoch = steps_per_epoch * accumulation
        loss_sum = torch.zeros((), device=ctx.device)
        if ctx.rank == 0 and state.resumed_from:
            print(f"  resumed at step {state.step} (epoch {state.epoch + 1})", flush=True)

        while state.step < total and not state.stopped_early:
            engine.model.train()
            batches = ctx.batches("train", micro, state.epoch)
            if pack:  # rows decided over the whole shard (dpo refuses packing)
                batches = pack_epoch(batches, pack, micro_per_epoch, spec.seed, state.epoch)
            for group in _steps(batches, accumulation, state.micro_index, micro_per_epoch):
                tensors = [_collate(raw, spec, pack, ctx.device) for raw in group]
                num_items = all_reduce_sum(sum(_items(t, spec) for t in tensors))
                for offset, batch in enumerate(tensors):
                    torch.manual_seed(_dropout_seed(spec.seed, ctx.rank, state.step, offset))
                    boundary = offset == len(tensors) - 1
                    loss_sum += engine.micro_step(batch, boundary, num_items, ctx.world_size)
                    meter.add_tokens(sum(len(ids) for ids in group[offset]["input_ids"]))
                state.micro_index += len(group)
                state.step += 1
                meter.step()
                if state.step % spec.log_every == 0 or state.step in (1, total):
                    _log(state, engine, ctx, meter, tracker, loss_sum, total)
                loss_sum.zero_()
                if spec.eval_every and state.step % spec.eval_every == 0:
                    _evaluate_and_save(engine, ctx, state, spec, tracker, pack, probe)
                _maybe_fail(config.fault, state.step, ctx.rank)
                if state.step >= total or state.stopped_early:
                    break
            else:  # the epoch's data is used up (a short shard may end before the limit)
                state.micro_index = micro_per_epoch
            if state.micro_index >= micro_per_epoch:
                state.epoch, state.micro_index = state.epoch + 1, 0
                if not spec.eval_every:
                    _evaluate_and_save(engine, ctx, state, spec, tracker, pack, probe)
            if state.epoch >= spec.epochs:
                break
        if state.last_checkpoint_step != state.step:
            _evaluate_and_save(engine, ctx, state, spec, tracker, pack, probe)
        final = _summary(state, nodes)
        tracker.finish(final)
        return final
    finally:  # a ZeRO-3 engine leaves transformers in partitioned mode until closed
        engine.close()


def evaluate_loss(model, ctx: WorkerContext, batch_size: int, pack: int | None = None) -> float:
    """Mean per-token loss on the validation split, over all workers."""
    import torch

    model.eval()
    loss_sum = torch.zeros((), device=ctx.device)
    tokens = torch.zeros((), device=ctx.device)
    with torch.no_grad():
        for raw in ctx.batches("validation", batch_size, 0):
            batch = collate(raw, pack_length=pack, device=ctx.device)
            count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
            loss_sum += model(**batch, use_cache=False).loss.float() * count
            tokens += count
    model.train()
    total = all_reduce_sum(torch.stack([loss_sum, tokens]))
    return round(float(total[0] / total[1]), 5) if total[1] else float("nan")


def _log(state, engine, ctx, meter, tracker, loss, total) -> None:
    import torch

    tokens = torch.tensor(float(meter.tokens), device=loss.device)
    both = all_reduce_sum(torch.stack([loss, tokens]))  # the parts of the global mean
    mean_loss = round(float(both[0]), 5)
    state.loss_history.append([state.step, mean_loss])
    rates = meter.read(float(both[1]))
    tracker.log({"train/loss": mean_loss, "train/lr": engine.lr, **_prefixed(rates)}, state.step)
    if ctx.rank == 0:
        print(
            f"  step {state.step}/{total}  loss {mean_loss:.4f}  lr {engine.lr:.2e}  "
            f"{rates['tokens_per_s']:.0f} tok/s  {rates['step_time_s']:.2f} s/step",
            flush=True,
        )


class _Probe:
    """The task probe's settings and tokenizer, loaded once."""

    def __init__(self, config: LoopConfig):
        from ftray.models import load_tokenizer

        assert config.probe is not None
        self.settings = config.probe
        self.tokenizer = load_tokenizer(config.model_dir, config.chat_template)
        self.synced = config.train.zero3  # partitioned weights: every rank in every forward
        self.metric = self.settings.task["primary"]

    def score(self, model, ctx: WorkerContext) -> float | None:
        from ftray.train.probe import task_score

        found = task_score(
            model, self.tokenizer, self.settings, ctx.rank, ctx.world_size, self.synced
        )
        return None if found is None else round(float(found), 5)


def _evaluate_and_save(
    engine, ctx, state: TrainState, spec: TrainSpec, tracker, pack, probe: _Probe | None
) -> None:
    logged: dict[str, float | None] = {}
    said = ""
    if spec.method == "dpo":  # the validation DPO loss stands in for the token loss
        eval_loss, accuracy = evaluate_pairs(
            engine.model, engine.reference, ctx, spec.per_worker_batch, spec.dpo.beta
        )
        state.accuracy_history.append([state.step, accuracy])
        logged["validation/preference_accuracy"] = accuracy
        said = f", preference accuracy {accuracy}"
    else:
        eval_loss = evaluate_loss(engine.model, ctx, spec.per_worker_batch, pack)
    state.record_eval(eval_loss, spec.early_stopping)
    state.last_checkpoint_step = state.step
    logged["validation/loss"] = eval_loss
    reported_loss = eval_loss if math.isfinite(eval_loss) else 1e30
    metrics: dict[str, float | int | None] = {
        "step": state.step,
        "epoch": state.epoch,
        "eval_loss": reported_loss,
        "loss": state.loss_history[-1][1] if state.loss_history else None,
    }
    if probe:
        score = probe.score(engine.model, ctx)
        state.record_task(score)
        logged[f"validation/{probe.metric}"] = score
        said = f", {probe.metric} {score}"
        task_metric = 0.0 if score is None else score  # nothing to count: worst
        metrics["task_metric"] = task_metric
        # what ranks checkpoints: the task metric (5 decimals), ties to the lower loss
        metrics["selection_score"] = task_metric - reported_loss * 1e-9
    tracker.log(logged, state.step)
    if ctx.rank == 0:
        note = "  (stopping early: no improvement)" if state.stopped_early else ""
        print(f"  validation loss {eval_loss:.4f}{said} at step {state.step}{note}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ftray-ckpt-") as folder:
        wrote = engine.save(folder, ctx.rank)
        if ctx.rank == 0:
            state.save(folder)
        ctx.report(metrics, folder if wrote or ctx.rank == 0 else None)


def _summary(state: TrainState, nodes: list) -> dict:
    return {
        "step": state.step,
        "epoch": state.epoch,
        "loss": state.loss_history[-1][1] if state.loss_history else None,
        "eval_loss": state.eval_history[-1][1] if state.eval_history else None,
        "best_eval_loss": state.best_eval_loss,
        "best_step": state.best_step,
        "stopped_early": state.stopped_early,
        "resumed_from": state.resumed_from,
        "loss_history": state.loss_history,
        "eval_history": state.eval_history,
        "task_history": state.task_history,
        "accuracy_history": state.accuracy_history,
        "best_task_metric": state.best_task_metric,
        "best_task_step": state.best_task_step,
        "worker_nodes": nodes,
    }


def _steps(batches, accumulation: int, skip: int, limit: int):
    """Lists of `accumulation` micro-batches, one per optimizer step, from micro-batch
    `skip` (those before were consumed by the run being resumed) up to `limit`."""
    group = []
    for index, raw in enumerate(batches):
        if index >= limit:
            return
        if index < skip:
            continue
        group.append(raw)
        if len(group) == accumulation:
            yield group
            group = []


def _collate(raw: dict, spec: TrainSpec, pack: int | None, device) -> dict:
    if spec.method == "dpo":
        return collate_pairs(raw, device)
    return collate(raw, pack_length=pack, device=device)


def _items(batch: dict, spec: TrainSpec):
    """What the loss averages over: the pairs' weights (dpo), else the tokens the loss counts
    (labels after the causal shift that are not masked out)."""
    if spec.method == "dpo":
        return batch["weights"].sum()
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum().float()


def _prefixed(rates: dict) -> dict:
    return {f"train/{key}": value for key, value in rates.items()}


def _dropout_seed(seed: int, rank: int, step: int, index: int) -> int:
    """A seed fixed by position, so a resumed run draws the same dropout masks."""
    return (seed * 1_000_003 + rank * 7_919 + step * 131 + index) % 2**63


def _maybe_fail(fault: FaultConfig | None, step: int, rank: int) -> None:
    """Test seam: kill this worker process once, right after `fault.step`."""
    if not fault or fault.step != step or fault.rank != rank:
        return
    marker = Path(fault.marker)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker rank {rank} killed after step {step}\n")
    print(f"  [fault injection] killing worker rank {rank} after step {step}", flush=True)
    # Ray Train registers a checkpoint when it next polls the workers (every 2 s); dying
    # within milliseconds of a report would lose that checkpoint and test an older one.
    time.sleep(5)
    os._exit(1)
