"""Retrieval index: `ftray index` throughput on Ray vs a single-process loop, and query latency.

    python -m bench.index [--chunks 2000] [--actors 2] [--latency 10000 100000] [--write]

Throughput: a synthetic corpus of `--chunks` documents of ~120 words (one chunk each, built
from the Quillbank documents in jobs/rag/docs with words shuffled, so no two are the same) is
indexed by `build_index` (Ray Data reads and chunks, `--actors` MiniLM actors embed, LanceDB
and bm25s write) and, on the same texts, by one process that reads, chunks and embeds in
batches of 64 with the same `Embedder` (no writes). Reported as chunks/s and ftray / baseline.

Latency: an index of N synthetic chunks (random unit vectors: embedding 100k chunks with
MiniLM on a CPU would take the benchmark's whole budget, and search cost does not depend on
what the vectors mean) is written in the artifact's layout, opened with `open_index`, and
asked 200 questions one at a time; p50/p99 of `search(q, k=5)` in ms (one MiniLM forward
pass, BM25, a LanceDB flat scan, RRF).

`--write` stores the results in bench/results/index.json, and refuses when the 1-minute load
average is 1 or more: timings on a shared, busy machine are not results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "index.json"
WORDS_PER_DOC = 120


def make_corpus(n: int, folder: Path, seed: int = 0) -> Path:
    """`n` markdown files of WORDS_PER_DOC words drawn from the Quillbank documents."""
    words = " ".join(p.read_text() for p in sorted((ROOT / "jobs/rag/docs").glob("*.md"))).split()
    rng = random.Random(seed)
    docs = folder / "docs"
    docs.mkdir()
    for i in range(n):
        (docs / f"doc-{i:06d}.md").write_text(" ".join(rng.choices(words, k=WORDS_PER_DOC)))
    return docs


def run_ftray(docs: Path, store: Path, actors: int) -> dict:
    from ftray.progress import Progress
    from ftray.rag.build import build_index
    from ftray.runtime import ray_session
    from ftray.spec import JobSpec, RaySpec
    from ftray.store import Store

    spec = JobSpec(
        project="bench",
        storage=str(store),
        model={"base": "tiny"},
        data={"sources": [{"path": str(docs / "unused.jsonl")}]},
        index={"sources": [str(docs)], "chunk_size": 160, "actors": actors},
    )
    with ray_session(RaySpec()):
        started = time.perf_counter()
        ref = build_index(spec, Store(str(store), "bench"), Progress())
        seconds = time.perf_counter() - started
    chunks = ref.manifest["counts"]["chunks"]
    return {
        "seconds": round(seconds, 1),
        "chunks": chunks,
        "chunks_per_s": round(chunks / seconds, 1),
    }


def run_baseline(docs: Path) -> dict:
    """One process: find, read and chunk the files, embed in batches of 64 (no writes)."""
    from ftray.rag.documents import chunk_rows, find_files
    from ftray.rag.embed import Embedder, embedder_path

    started = time.perf_counter()
    embedder = Embedder(embedder_path("minilm"))
    texts = [row["text"] for f in find_files([str(docs)]) for row in chunk_rows(f, 160, 32)]
    for start in range(0, len(texts), 64):
        embedder.embed(texts[start : start + 64])
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 1),
        "chunks": len(texts),
        "chunks_per_s": round(len(texts) / seconds, 1),
    }


def synthetic_index(n: int, store_root: Path) -> str:
    """An index artifact of `n` chunks with random unit vectors; returns its id."""
    import pyarrow as pa

    from ftray.rag.build import _write_tables
    from ftray.rag.index import INDEXES
    from ftray.spec.index import IndexSpec
    from ftray.store import Store

    store = Store(str(store_root), "bench")
    words = " ".join(p.read_text() for p in sorted((ROOT / "jobs/rag/docs").glob("*.md"))).split()
    rng, generator = random.Random(n), np.random.default_rng(n)
    texts = [" ".join(rng.choices(words, k=WORDS_PER_DOC)) for _ in range(n)]
    vectors = generator.standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.table(
        {
            "id": [f"{i:016x}" for i in range(n)],
            "source": [f"doc-{i}.md" for i in range(n)],
            "file": [f"doc-{i}.md" for i in range(n)],
            "ordinal": [0] * n,
            "text": texts,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384),
        }
    )
    index_id = f"index-synthetic-{n}"
    _write_tables(store, index_id, table)
    settings = IndexSpec(sources=["synthetic"]).model_dump(mode="json")
    store.write_json(settings, INDEXES, index_id, "index_spec.json")
    store.finish({"index_id": index_id, "counts": {"chunks": n}, "files": []}, INDEXES, index_id)
    return index_id


def run_latency(n: int, store_root: Path, queries: int = 200) -> dict:
    from ftray.rag.index import open_index
    from ftray.store import Store

    index_id = synthetic_index(n, store_root)
    retriever = open_index(Store(str(store_root), "bench"), index_id)
    questions = [json.loads(line)["prompt"] for line in (ROOT / "jobs/rag/questions.jsonl").open()]
    retriever.search(questions[0], 5)  # first call: lazy allocations
    times = []
    for i in range(queries):
        started = time.perf_counter()
        retriever.search(questions[i % len(questions)], 5)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "chunks": n,
        "queries": queries,
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=2000, help="throughput corpus size")
    parser.add_argument("--actors", type=int, default=2, help="embedding actors for ftray")
    parser.add_argument("--latency", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="store in bench/results/index.json")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if args.write and load >= 1:
        raise SystemExit(f"load average {load:.2f} ≥ 1: not writing results from a busy machine")

    results: dict = {"machine": f"{os.cpu_count()} CPUs", "load_average_at_start": load}
    with tempfile.TemporaryDirectory() as tmp:
        docs = make_corpus(args.chunks, Path(tmp))
        if args.chunks:
            ftray = run_ftray(docs, Path(tmp) / "store", args.actors)
            baseline = run_baseline(docs)
            results["throughput"] = {
                "actors": args.actors,
                "ftray": ftray,
                "baseline": baseline,
                "ratio": round(ftray["chunks_per_s"] / baseline["chunks_per_s"], 2),
            }
        results["latency"] = [
            run_latency(n, Path(tmp) / "latency", args.queries) for n in args.latency
        ]
    print(json.dumps(results, indent=2))
    if args.write:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
