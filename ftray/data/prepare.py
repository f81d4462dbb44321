"""The prepare stage on Ray Data: sources → checked, deduplicated, split, tokenized parquet.

Contract. In: the source files `data` names and the model's tokenizer (no other artifact).
Out: a `DatasetRef` to `datasets/<dataset-id>/`: one parquet folder per split (`SPLITS`),
`report.json` and the manifest (sources' hashes, per-file accounts, counts, token stats).
Side effects: a GGUF base is converted once into the store's model cache; abandoned attempt
folders of the same dataset are removed.

  read (a task per jsonl byte range, or per file) → CheckRecords actors (normalise,
  contract, toxicity, PII, tokenize, fingerprint) → exact and near-duplicate groupbys →
  held-out splits → parquet

Three example splits: `train`; `validation` (checkpoint selection, early stopping, sweep
scores) and `eval` (the test set, scored only by `ftray eval`), each carved from the sources
by a prompt hash or given as files. Every line (row) read ends in exactly one of train,
validation, eval, quarantine (with its rule, reason, source location and raw text) or the
blank-line count; per file, the lines read must equal train + validation + eval + quarantine
+ blank, or the stage fails before the manifest is written. The
dataset id is a hash of the sources' bytes, the data spec, the model (its tokenizer) and
PREPARE_VERSION, so the same inputs give the same dataset and reuse it. Each attempt writes
to a folder of its own and moves it into place when complete, so an interrupted prepare
never blocks the next one.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from ftray.artifacts import DatasetRef, reuse
from ftray.data.checks import load_word_list
from ftray.data.records import BLANK, CheckRecords
from ftray.data.report import build_report
from ftray.data.retrieval import CONTEXT_COLUMNS, AddContext, retrieval_counts
from ftray.data.shards import RayPool, decide, outcomes, shard_count
from ftray.data.sources import SourceFile, expand_sources, number_files, scan_jsonl
from ftray.data.tally import Tally, tally
from ftray.errors import UserError
from ftray.models import load_tokenizer, resolve_model
from ftray.progress import Progress
from ftray.spec import DataSpec, ModelSpec
from ftray.store import Store, content_id, file_digest

# Bump when the rules change what a dataset holds, so old ids are not reused.
# 3: lines decoded one by one, blank lines counted, raw text in quarantine, JSON completions.
# 4: a validation split apart from the eval (test) split.
# 5: one completion per prompt (rule 'conflict'), source precedence.
# 6: preference pairs carry a weight.
# 7: every assistant turn of a chat is labelled (data.train_on); model.chat_template.
PREPARE_VERSION = 7
SPLITS = ("train", "validation", "eval", "quarantine")
EXAMPLE_COLUMNS = ["source", "row", "prompt", "completion", "messages", "input_ids", "labels"]
EXAMPLE_COLUMNS += ["num_tokens"]
PAIR_COLUMNS = ["rejected", "rejected_input_ids", "rejected_labels", "weight"]  # data.preference
QUARANTINE_COLUMNS = ["source", "row", "prompt", "completion", "fields", "raw", "rule", "reason"]
# A jsonl file is read in ranges of this many bytes, one Ray Data task each (~25k lines of
# 80 bytes: long enough that a task's start-up is a small part of it).
READ_RANGE_BYTES = 2 << 20
_ATTEMPT = ".attempt-"  # `<dataset_id>.attempt-<hex>`: an attempt being written
_STALE_ATTEMPT_S = 24 * 3600  # an attempt folder untouched this long was abandoned


def prepare(data: DataSpec, model: ModelSpec, store: Store, progress: Progress) -> DatasetRef:
    """Read, check, deduplicate, split and tokenize the job's data into a versioned dataset.

    Raises UserError when no record is left for training (the dataset is still written, so
    `ftray data show JOB DATASET --quarantine` lists why).
    """
    _check_settings(data)
    files = number_files(
        expand_sources(data.sources),
        *(
            expand_sources(sources, origin, f"data.{origin}_sources") if sources else []
            for origin, sources in (
                ("eval", data.eval_sources),
                ("validation", data.validation_sources),
            )
        ),
    )
    model_dir = resolve_model(model, store)
    # here, not in the Ray Data actors: a base model with no chat template is a UserError
    load_tokenizer(model_dir, model.chat_template)
    # a jsonl file is hashed and cut into byte ranges in one pass
    scans = {f.path: scan_jsonl(f, READ_RANGE_BYTES) for f in files if f.format == "jsonl"}
    digests = [
        {"path": f.path, "format": f.format, "sha256": s.sha256 if s else _digest(f)}
        for f in files
        for s in [scans.get(f.path)]
    ]
    # 'latest' means the index of today: the resolved id is part of the dataset's identity;
    # where dedup runs does not change what it finds: not part of it
    index_id = _index_id(data, store)
    rules = data.model_dump(mode="json", exclude={"dedup": {"shards"}})
    dataset_id = content_id(
        "ds",
        digests,
        rules,
        model.model_dump(mode="json"),
        PREPARE_VERSION,
        *([index_id] if index_id else []),
    )
    manifest = reuse(store, "datasets", dataset_id)
    reused = manifest is not None
    if not reused:
        _clear_incomplete(store, dataset_id)
        attempt = f"{dataset_id}{_ATTEMPT}{uuid.uuid4().hex[:8]}"
        try:
            manifest = _build(
                data, model, model_dir, files, scans, digests, store, attempt, progress, index_id
            )
        except BaseException:  # a failed or interrupted attempt leaves nothing behind
            if store.fs.exists(store.path("datasets", attempt)):
                store.fs.rm(store.path("datasets", attempt), recursive=True)
            raise
        manifest = _publish(store, attempt, dataset_id, {"dataset_id": dataset_id, **manifest})
    assert manifest is not None
    _require_training_records(manifest)
    return DatasetRef(dataset_id, store.uri("datasets", dataset_id), manifest, reused)


def _index_id(data: DataSpec, store: Store) -> str | None:
    """The id of the index data.retrieval names (UserError when there is none)."""
    if data.retrieval is None:
        return None
    from ftray.rag.index import resolve_index_id

    return resolve_index_id(store, data.retrieval.index)


def _build(
    data, model, model_dir, files, scans, digests, store, attempt, progress, index_id
) -> dict:
    """Write the splits and the report of one attempt into `datasets/<attempt>`; returns
    the manifest (without its id)."""
    import ray
    from ray.data.expressions import col

    from ftray.data.datasource import SourceRecords

    progress.note(f"checking {len(files)} file(s) with Ray Data ({data.num_workers} actor(s))")
    clock = _Clock()
    records = ray.data.read_datasource(SourceRecords(files, scans))
    checked = records.map_batches(
        CheckRecords,
        fn_constructor_kwargs={
            "data": data.model_dump(mode="json"),
            "model_dir": model_dir,
            "chat_template": model.chat_template,
        },
        batch_format="pandas",
        batch_size=256,
        compute=_actors(data.num_workers),
    ).materialize()
    clock.lap("read and check")
    if checked.count() == 0:
        paths = ", ".join(f.path for f in files)
        raise UserError(f"data.sources: no line to read in {paths}; every file is empty.")

    # preference pairs may share a prompt (A over B, C over B): no conflict rule for them
    dedup = data.dedup.model_copy(
        update={"conflicts": data.dedup.conflicts and not data.preference}
    )
    pool = RayPool(data, shard_count(data, checked.count()))
    try:
        passing = checked.filter(expr=col("rule") == "")
        precedence = {f.path: f.precedence for f in files}
        decide(passing, data.model_copy(update={"dedup": dedup}), precedence, pool)
        clock.lap("duplicates and split")
        final = checked.map_batches(
            _assign, fn_kwargs={"pool": pool}, batch_format="pandas"
        ).materialize()
    finally:
        pool.close()
    clock.lap("assign")
    if data.retrieval:
        final = _add_context(final, data, model, model_dir, store, index_id, progress)
        clock.lap("retrieve")

    counted = tally(final, bool(data.retrieval))
    accounts = _accounts(counted, digests)  # raises before anything is published
    counts = _counts(counted)
    clock.lap("counts")
    progress.note(
        f"{counts['read']} lines read: {counts['train']} train, {counts['validation']} "
        f"validation, {counts['eval']} eval, {counts['quarantine']} quarantined, "
        f"{counts['blank']} blank; {_removed(counts)} of the quarantined removed as "
        "duplicates (exact, near, leakage) or conflicts"
    )
    for split in SPLITS:
        part = final.filter(expr=col("split") == split)
        if split == "train":
            part = part.random_shuffle(seed=data.seed)
        columns = QUARANTINE_COLUMNS if split == "quarantine" else EXAMPLE_COLUMNS
        if data.retrieval and split != "quarantine":
            columns = [*columns, *CONTEXT_COLUMNS]
        if data.preference:  # the worse answer, and its tokens where the pair is kept
            columns = [*columns, *(PAIR_COLUMNS[:1] if split == "quarantine" else PAIR_COLUMNS)]
        part.select_columns(columns).write_parquet(store.uri("datasets", attempt, split))
    written = {split: _rows_written(store.uri("datasets", attempt, split)) for split in SPLITS}
    if written != {split: counts[split] for split in SPLITS}:
        raise RuntimeError(f"parquet holds {written} rows, expected {counts}")
    clock.lap("write")
    report = build_report(counted, data)
    store.write_json(report, "datasets", attempt, "report.json")
    clock.lap("report")
    progress.note(f"seconds per step: {clock}")
    retrieval = retrieval_counts(counted, data.retrieval.k, index_id) if data.retrieval else None
    return {
        "sources": digests,
        "files": accounts,
        "spec": data.model_dump(mode="json"),
        "model": model.model_dump(mode="json"),
        "model_dir": model_dir,
        "counts": counts,
        "tokens": report["tokens"],
        **({"retrieval": retrieval} if retrieval else {}),
        "prepare_version": PREPARE_VERSION,
    }


def _add_context(final, data, model, model_dir, store, index_id, progress):
    """Every example with its retrieved chunks and re-tokenized (`AddContext` actors)."""
    progress.note(f"retrieving {data.retrieval.k} chunk(s) per example from {index_id}")
    return final.map_batches(
        AddContext,
        fn_constructor_kwargs={
            "data": data.model_dump(mode="json"),
            "model_dir": model_dir,
            "chat_template": model.chat_template,
            "storage": store.storage,
            "project": store.project,
            "index_id": index_id,
        },
        batch_format="pandas",
        batch_size=64,
        compute=_actors(data.num_workers),
    ).materialize()


def _actors(workers: int):
    """A pool of up to `workers` actors, all asked for at the start. Ray Data's autoscaler
    would start one and add the next only once the first was busy (13 s later in a 100k
    prepare, with one core idle meanwhile); ones the cluster cannot place yet stay pending
    while the others work."""
    import ray

    return ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers)


class _Clock:
    """Wall time per step of a prepare, for the user and the benchmark's profile."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.laps[step] = now - self.last
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds:.1f}" for step, seconds in self.laps.items())


def _check_settings(data: DataSpec) -> None:
    """What would fail inside every Ray actor fails here once, as a UserError."""
    import phonenumbers

    if data.toxicity.enabled and not data.toxicity.hook:
        load_word_list(data.toxicity.word_list)
    region = data.pii.phone_region
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise UserError(
            f"data.pii.phone_region: {region!r} is not a region phonenumbers knows; use an "
            "ISO 3166 country code such as GB, US, DE or IN."
        )


def _clear_incomplete(store: Store, dataset_id: str) -> None:
    """Remove what interrupted attempts at this dataset left: its folder without a manifest
    (a crash between the move and the manifest), and attempt folders untouched for a day.
    Younger attempt folders may belong to a prepare of the same data still running."""
    cutoff = time.time() - _STALE_ATTEMPT_S
    for name in store.list_dirs("datasets"):
        if name == dataset_id or (
            name.startswith(f"{dataset_id}{_ATTEMPT}") and _modified(store, name) < cutoff
        ):
            store.fs.rm(store.path("datasets", name), recursive=True)


def _modified(store: Store, name: str) -> float:
    """When a dataset folder last changed (its newest file), or now where the storage cannot
    tell (object stores keep no folder times), so such folders are left alone."""
    try:
        times = [
            info["mtime"] if "mtime" in info else info["LastModified"].timestamp()
            for info in store.fs.find(store.path("datasets", name), detail=True).values()
        ]
    except (KeyError, AttributeError, OSError):
        return time.time()
    return max(times, default=time.time())


def _publish(store: Store, attempt: str, dataset_id: str, manifest: dict) -> dict:
    """Move a finished attempt into place, then mark it complete (the manifest last, so a
    crash in between leaves an incomplete folder the next attempt clears)."""
    if store.is_complete("datasets", dataset_id):  # the same data, prepared meanwhile
        store.fs.rm(store.path("datasets", attempt), recursive=True)
        return store.manifest("datasets", dataset_id)
    store.fs.mv(store.path("datasets", attempt), store.path("datasets", dataset_id), recursive=True)
    return store.finish(manifest, "datasets", dataset_id)


def _require_training_records(manifest: dict) -> None:
    counts = manifest["counts"]
    if counts["train"]:
        return
    rules = ", ".join(f"{rule}: {n}" for rule, n in counts["quarantine_by_rule"].items())
    dataset_id = manifest["dataset_id"]
    raise UserError(
        f"no training records in {dataset_id}: {counts['read']} lines read, "
        f"{counts['validation']} validation, {counts['eval']} eval, "
        f"{counts['quarantine']} quarantined ({rules or 'none'}), "
        f"{counts['blank']} blank. Fix the data or the data section of the spec (the fields "
        "named, data.labels, data.output_schema, data.max_seq_len) for the most common rule; "
        f"`ftray data show JOB.yaml {dataset_id} --quarantine` lists every quarantined "
        "line with its text."
    )


def _assign(batch, pool):
    """Each record's split and rule: its own rule from the checks, else what the shards
    decided (a duplicate's or conflict's rule; eval or validation when carved or moved),
    else its file's split."""
    import numpy as np

    batch = batch.reset_index(drop=True)
    orders = batch["order"].astype("int64").to_numpy()
    decided = outcomes(pool, orders).set_index("order").reindex(orders).fillna("")
    decided = decided.reset_index(drop=True)
    dropped = (batch["rule"] == "") & (decided["rule"] != "")
    batch["rule"] = batch["rule"].where(~dropped, decided["rule"])
    batch["reason"] = batch["reason"].where(~dropped, decided["reason"])
    split = np.where(decided["split"] != "", decided["split"], batch["origin"])
    split = np.where(batch["rule"] != "", "quarantine", split)
    batch["split"] = np.where(batch["rule"] == BLANK, BLANK, split)
    return batch


def _removed(counts: dict) -> int:
    rules = counts["quarantine_by_rule"]
    return sum(
        rules.get(rule, 0) for rule in ("duplicate", "near_duplicate", "leakage", "conflict")
    )


def _counts(counted: Tally) -> dict:
    by_split: dict[str, int] = {}
    for part in counted.files.values():
        for split, n in part["splits"].items():
            by_split[split] = by_split.get(split, 0) + n
    counts: dict[str, Any] = {"read": sum(part["lines"] for part in counted.files.values())}
    counts.update({split: by_split.get(split, 0) for split in (*SPLITS, BLANK)})
    counts["input"] = counts["read"] - counts[BLANK]  # records: lines that are not blank
    counts["quarantine_by_rule"] = dict(sorted(counted.rules.items()))
    return counts


def _accounts(counted: Tally, digests: list[dict]) -> list[dict]:
    """Per source file: lines (rows) its reader read = train + validation + eval + quarantine
    + blank, each line once (no row number twice). Raises RuntimeError when a line is lost or
    doubled on the way."""
    accounts = []
    for source in digests:
        empty: dict[str, Any] = {"lines": 0, "doubled": False, "read": [], "splits": {}}
        part: dict[str, Any] = counted.files.get(source["path"]) or empty
        read = part["read"][0] if part["read"] else 0
        account = {
            "path": source["path"],
            "format": source["format"],
            "read": read,
            **{split: int(part["splits"].get(split, 0)) for split in (*SPLITS, BLANK)},
        }
        landed = sum(account[split] for split in (*SPLITS, BLANK))
        if landed != read or part["doubled"] or len(part["read"]) > 1:
            raise RuntimeError(f"lines lost or doubled in prepare: {account}")
        accounts.append(account)
    return accounts


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
