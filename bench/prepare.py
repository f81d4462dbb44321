"""Prepare throughput: `ftray prepare` on Ray Data vs one process doing the same work.

    python -m bench.prepare [--sizes 10000 100000] [--baseline 10000 100000]

Both sides run the same per-record code (`CheckRecords.one`: normalise, contract, toxicity,
PII, tokenize with the tiny model's tokenizer, MinHash + LSH keys) and the same exact and
near-duplicate rules; the baseline is a single-process `datasets.map` plus in-memory dicts.
Inputs are Banking77's 10,003 training queries repeated with variations (typos, suffixes,
reordered clauses), so near-duplicates are common, as in real scraped data. Results go to
bench/results/prepare.json as examples/s and as the ratio ftray / baseline, with prepare's
own wall time per step; nothing is asserted about time. What each side's time includes:
ftray, the whole `prepare` call in a started Ray (hashing, reading, checks, dedup, split,
parquet writes, report); the baseline, reading, checks and dedup (no split, no writes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "prepare.json"
STEPS = "seconds per step: "  # prepare's note of its wall time per step
SUFFIXES = ["", " please", " thanks", "?", " asap", " - urgent", " (again)", " help"]


def make_data(n: int, folder: Path, seed: int = 0) -> Path:
    rows = list(csv.DictReader((ROOT / "data/banking77/train.csv").open()))
    rng = random.Random(seed)
    path = folder / f"bank-{n}.jsonl"
    with path.open("w") as out:
        for i in range(n):
            base = rows[i % len(rows)]
            text = base["text"]
            if i >= len(rows):  # later copies vary: some become near-duplicates, some not
                words = text.split()
                if words and rng.random() < 0.5:
                    k = rng.randrange(len(words))
                    words[k] = words[k][::-1] if rng.random() < 0.3 else words[k].upper()
                text = " ".join(words) + rng.choice(SUFFIXES) + f" #{rng.randrange(10**6)}"
            out.write(json.dumps({"prompt": text, "completion": base["category"]}) + "\n")
    return path


def run_ftray(path: Path, store: Path) -> dict:
    from ftray.data.prepare import prepare
    from ftray.progress import Progress
    from ftray.runtime import ray_session
    from ftray.spec import DataSpec, ModelSpec, RaySpec
    from ftray.store import Store

    steps: dict[str, float] = {}

    class Notes(Progress):
        def note(self, message: str) -> None:
            super().note(message)
            if message.startswith(STEPS):
                for step in message.removeprefix(STEPS).split(", "):
                    name, seconds = step.rsplit(" ", 1)
                    steps[name] = float(seconds)

    data = DataSpec(sources=[{"path": str(path)}], max_seq_len=512)
    with ray_session(RaySpec()):
        started = time.perf_counter()
        ref = prepare(data, ModelSpec(base="tiny"), Store(str(store), "bench"), Notes())
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "counts": ref.manifest["counts"], "steps": steps}


def run_baseline(path: Path, store: Path) -> dict:
    """One process: datasets.map over CheckRecords.one, then dict-based dedup and a split."""
    import numpy as np
    from datasets import Dataset

    from ftray.data.checks import similarity
    from ftray.data.records import CheckRecords
    from ftray.data.sources import SourceFile, read_records
    from ftray.models import resolve_model
    from ftray.spec import DataSpec, ModelSpec
    from ftray.store import Store

    data = DataSpec(sources=[{"path": str(path)}], max_seq_len=512)
    model_dir = resolve_model(ModelSpec(base="tiny"), Store(str(store), "bench"))
    started = time.perf_counter()
    records = Dataset.from_list(read_records(SourceFile(str(path), "jsonl")))
    checker = CheckRecords(data.model_dump(mode="json"), model_dir)
    checked = records.map(checker.one, remove_columns=["error"])
    seen, buckets, kept, dropped = {}, {}, [], 0
    for row in checked:
        if row["rule"]:
            dropped += 1
            continue
        if row["exact_key"] in seen:
            dropped += 1
            continue
        seen[row["exact_key"]] = row["order"]
        signature = np.frombuffer(row["signature"], dtype=np.uint32)
        near = False
        for key in row["band_keys"]:
            for other in buckets.get(key, [])[:256]:
                if similarity(signature, other) >= data.dedup.threshold:
                    near = True
                    break
            if near:
                break
        if near:
            dropped += 1
            continue
        for key in row["band_keys"]:
            buckets.setdefault(key, []).append(signature)
        kept.append(row["order"])
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "kept": len(kept), "dropped": dropped}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--baseline",
        type=int,
        nargs="*",
        default=[10_000, 100_000],
        help="sizes to also run the baseline on (none: no baseline)",
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Runs of other sizes from earlier invocations are kept, so sizes can be run one at a time.
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    results["machine"] = f"{os.cpu_count()} CPUs"
    wanted = sorted(set(args.sizes) | set(args.baseline))
    results["runs"] = [r for r in results["runs"] if r["examples"] not in wanted]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in wanted:
            path = make_data(n, folder)
            entry = {"examples": n, "ftray": run_ftray(path, folder / f"store-{n}")}
            entry["ftray"]["examples_per_s"] = round(n / entry["ftray"]["seconds"], 1)
            if n in args.baseline:
                base = run_baseline(path, folder / f"store-{n}")
                base["examples_per_s"] = round(n / base["seconds"], 1)
                entry["baseline"] = base
                entry["speedup"] = round(base["seconds"] / entry["ftray"]["seconds"], 2)
            results["runs"].append(entry)
            print(json.dumps(entry), flush=True)
    results["runs"].sort(key=lambda r: r["examples"])
    sizes = results["runs"]
    if len(sizes) > 1:
        first, last = sizes[0], sizes[-1]
        per_first = first["ftray"]["seconds"] / first["examples"]
        per_last = last["ftray"]["seconds"] / last["examples"]
        results["seconds_per_example_ratio_largest_vs_smallest"] = round(per_last / per_first, 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
