"""The prepare stage on Ray Data: sources → checked, deduplicated, split, tokenized parquet.

  read (one task per file) → CheckRecords actors (normalise, contract, toxicity, PII,
  tokenize, fingerprint) → exact and near-duplicate groupbys → held-out split → parquet

Every input record ends in exactly one of train, eval or quarantine (with its rule, reason
and source location); the manifest's counts add up or the stage fails. The dataset id is a
hash of the sources' bytes, the data spec, the model (its tokenizer) and PREPARE_VERSION, so
the same inputs give the same dataset and reuse it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from ftray.data.dedup import find_duplicates
from ftray.data.records import CheckRecords
from ftray.data.report import build_report
from ftray.data.sources import SourceFile, expand_sources, number_files, read_records
from ftray.models import resolve_model
from ftray.progress import Progress
from ftray.spec import DataSpec, ModelSpec
from ftray.store import Store, content_id, file_digest

# Bump when the rules change what a dataset holds, so old ids are not reused.
PREPARE_VERSION = 2
SPLITS = ("train", "eval", "quarantine")
EXAMPLE_COLUMNS = ["source", "row", "prompt", "completion", "messages", "input_ids", "labels"]
EXAMPLE_COLUMNS += ["num_tokens"]
QUARANTINE_COLUMNS = ["source", "row", "prompt", "completion", "fields", "rule", "reason"]


@dataclass(frozen=True)
class DatasetRef:
    """A finished dataset artifact."""

    dataset_id: str
    uri: str
    manifest: dict
    reused: bool


def prepare(data: DataSpec, model: ModelSpec, store: Store, progress: Progress) -> DatasetRef:
    """Read, check, deduplicate, split and tokenize the job's data into a versioned dataset."""
    import ray
    from ray.data.expressions import col

    evals = (
        expand_sources(data.eval_sources, "eval", "data.eval_sources") if data.eval_sources else []
    )
    files = number_files(expand_sources(data.sources), evals)
    model_dir = resolve_model(model, store)
    digests = [{"path": f.path, "format": f.format, "sha256": _digest(f)} for f in files]
    dataset_id = content_id(
        "ds", digests, data.model_dump(mode="json"), model.model_dump(mode="json"), PREPARE_VERSION
    )
    if store.is_complete("datasets", dataset_id):
        manifest = store.manifest("datasets", dataset_id)
        return DatasetRef(dataset_id, store.uri("datasets", dataset_id), manifest, True)

    progress.note(f"checking {len(files)} file(s) with Ray Data ({data.num_workers} actor(s))")
    records = ray.data.from_items([asdict(f) for f in files]).flat_map(
        lambda item: read_records(SourceFile(**item))
    )
    checked = records.map_batches(
        CheckRecords,
        fn_constructor_kwargs={"data": data.model_dump(mode="json"), "model_dir": model_dir},
        batch_format="pandas",
        batch_size=256,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=data.num_workers),
    ).materialize()

    passing = checked.filter(expr=col("rule") == "")
    dedup = data.dedup.exact or data.dedup.near
    drops = find_duplicates(passing, data.dedup, checked.count()) if dedup else {}
    progress.note(f"duplicates: {len(drops)} record(s) removed (exact, near, leakage)")
    eval_orders = None if data.eval_sources else _held_out(passing, drops, data)
    final = checked.map_batches(
        _assign,
        fn_kwargs={"drops": drops, "eval_orders": eval_orders},
        batch_format="pandas",
    ).materialize()

    narrow = ["split", "rule", "reason", "source", "row", "num_tokens", "pii_redacted", "truncated"]
    table = final.select_columns(narrow)
    table = table.to_pandas()
    counts = _counts(table)
    progress.note(
        f"{counts['input']} records: {counts['train']} train, {counts['eval']} eval, "
        f"{counts['quarantine']} quarantined"
    )
    for split in SPLITS:
        part = final.filter(expr=col("split") == split)
        if split == "train":
            part = part.random_shuffle(seed=data.seed)
        columns = QUARANTINE_COLUMNS if split == "quarantine" else EXAMPLE_COLUMNS
        part.select_columns(columns).write_parquet(store.uri("datasets", dataset_id, split))
    written = {split: _rows_written(store.uri("datasets", dataset_id, split)) for split in SPLITS}
    if written != {split: counts[split] for split in SPLITS}:
        raise RuntimeError(f"parquet holds {written} rows, expected {counts}")
    report = build_report(table, data)
    store.write_json(report, "datasets", dataset_id, "report.json")
    manifest = store.finish(
        {
            "dataset_id": dataset_id,
            "sources": digests,
            "spec": data.model_dump(mode="json"),
            "model": model.model_dump(mode="json"),
            "model_dir": model_dir,
            "counts": counts,
            "tokens": report["tokens"],
            "prepare_version": PREPARE_VERSION,
        },
        "datasets",
        dataset_id,
    )
    return DatasetRef(dataset_id, store.uri("datasets", dataset_id), manifest, False)


def _held_out(passing, drops: dict, data: DataSpec) -> set[int]:
    """Orders of the eval records: per label (or overall), the lowest hash ranks.

    Exact stratification: every label keeps `eval_fraction` of its records for eval
    (rounded), chosen by a salted hash of the prompt so the choice is stable across runs.
    """
    rows = passing.select_columns(["order", "prompt", "completion"]).to_pandas()
    rows = rows[~rows["order"].isin(list(drops))]
    rows["bucket"] = [_bucket(data.seed, prompt) for prompt in rows["prompt"]]
    rows["stratum"] = rows["completion"] if data.labels else ""
    chosen: set[int] = set()
    for _, group in rows.groupby("stratum"):
        take = round(len(group) * data.eval_fraction)
        chosen.update(int(o) for o in group.nsmallest(take, "bucket")["order"])
    return chosen


def _bucket(seed: int, prompt: str) -> int:
    key = f"{seed}:{' '.join(prompt.lower().split())}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def _assign(batch, drops: dict, eval_orders: set[int] | None):
    splits, rules, reasons = [], [], []
    for order, rule, reason, origin in zip(
        batch["order"], batch["rule"], batch["reason"], batch["origin"], strict=True
    ):
        if not rule and int(order) in drops:
            rule, reason = drops[int(order)]
        if rule:
            splits.append("quarantine")
        elif eval_orders is None:
            splits.append(origin)
        else:
            splits.append("eval" if int(order) in eval_orders else "train")
        rules.append(rule)
        reasons.append(reason)
    batch["split"], batch["rule"], batch["reason"] = splits, rules, reasons
    return batch


def _counts(table) -> dict:
    by_split = table["split"].value_counts().to_dict()
    counts = {"input": len(table), **{s: int(by_split.get(s, 0)) for s in SPLITS}}
    rules = table.loc[table["split"] == "quarantine", "rule"].value_counts().to_dict()
    counts["quarantine_by_rule"] = {rule: int(n) for rule, n in sorted(rules.items())}
    if counts["input"] != sum(counts[s] for s in SPLITS):
        raise RuntimeError(f"records lost in prepare: {counts}")
    return counts


def _rows_written(uri: str) -> int:
    import fsspec
    import pyarrow.dataset as pds

    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        return 0  # Ray writes no file for an empty split
    return pds.dataset(path, filesystem=fs, format="parquet").count_rows()


def _digest(file: SourceFile) -> str:
    """sha256 of a file, or of every file in a saved HF dataset folder."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(file.path)
    if not fs.isdir(path):
        return file_digest(path, fs)
    digest = hashlib.sha256()
    for member in sorted(fs.find(path)):
        digest.update(f"{member[len(path) :]}:{file_digest(member, fs)}".encode())
    return digest.hexdigest()
