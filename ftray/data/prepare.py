"""The prepare stage on Ray Data: sources → checked, tokenized train/eval/quarantine parquet.

Every input record ends in exactly one of train, eval or quarantine (with its rule and reason);
the manifest's counts add up, and the dataset id is a hash of the sources' bytes, the rules
and the tokenizer, so the same inputs give the same dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ftray.data.sources import SourceFile, expand_sources, read_records
from ftray.data.tokenize import messages_for, tokenize_example
from ftray.models import load_tokenizer, resolve_model
from ftray.progress import Progress
from ftray.spec import DataSpec, ModelSpec
from ftray.store import Store, content_id, file_digest

# Bump when the rules below change what a dataset holds, so old ids are not reused.
PREPARE_VERSION = 1
SPLITS = ("train", "eval", "quarantine")


@dataclass(frozen=True)
class DatasetRef:
    """A finished dataset artifact."""

    dataset_id: str
    uri: str
    manifest: dict
    reused: bool


def prepare(data: DataSpec, model: ModelSpec, store: Store, progress: Progress) -> DatasetRef:
    """Read, check, split and tokenize the job's data into a versioned dataset."""
    import ray
    from ray.data.expressions import col

    files = expand_sources(data.sources)
    model_dir = resolve_model(model, store)
    digests = [
        {"path": f.path, "format": f.format, "sha256": file_digest(*_fs_path(f))} for f in files
    ]
    dataset_id = content_id(
        "ds", digests, data.model_dump(mode="json"), model.model_dump(mode="json"), PREPARE_VERSION
    )
    if store.is_complete("datasets", dataset_id):
        return DatasetRef(
            dataset_id,
            store.uri("datasets", dataset_id),
            store.manifest("datasets", dataset_id),
            True,
        )

    progress.note(f"reading {len(files)} file(s) with Ray Data")
    records = ray.data.from_items([{"path": f.path, "format": f.format} for f in files]).flat_map(
        lambda item: read_records(SourceFile(item["path"], item["format"]))
    )
    checked = records.map_batches(
        _CheckAndTokenize,
        fn_constructor_kwargs={"data": data.model_dump(mode="json"), "model_dir": model_dir},
        batch_format="pandas",
        batch_size=256,
        compute=ray.data.ActorPoolStrategy(size=1),
    ).materialize()

    counts = _counts(checked)
    progress.note(
        f"{counts['input']} records: {counts['train']} train, {counts['eval']} eval, "
        f"{counts['quarantine']} quarantined"
    )
    tokens = {}
    for split in SPLITS:
        part = checked.filter(expr=col("split") == split)
        if split == "train" and counts["train"]:
            total = int(part.sum("num_tokens"))
            tokens = {
                "train_total": total,
                "train_mean": round(total / counts["train"], 1),
                "train_max": int(part.max("num_tokens")),
            }
            part = part.random_shuffle(seed=data.seed)
        columns = _QUARANTINE_COLUMNS if split == "quarantine" else _EXAMPLE_COLUMNS
        part.select_columns(columns).write_parquet(store.uri("datasets", dataset_id, split))

    manifest = store.finish(
        {
            "dataset_id": dataset_id,
            "sources": digests,
            "spec": data.model_dump(mode="json"),
            "model": model.model_dump(mode="json"),
            "model_dir": model_dir,
            "counts": counts,
            "tokens": tokens,
            "prepare_version": PREPARE_VERSION,
        },
        "datasets",
        dataset_id,
    )
    return DatasetRef(dataset_id, store.uri("datasets", dataset_id), manifest, False)


_EXAMPLE_COLUMNS = [
    "source",
    "row",
    "prompt",
    "completion",
    "messages",
    "input_ids",
    "labels",
    "num_tokens",
]
_QUARANTINE_COLUMNS = ["source", "row", "prompt", "completion", "fields", "rule", "reason"]


def _fs_path(file: SourceFile):
    import fsspec

    fs, path = fsspec.core.url_to_fs(file.path)
    return path, fs


def _counts(checked) -> dict:
    table = checked.select_columns(["split", "rule"]).to_pandas()
    by_split = table["split"].value_counts().to_dict()
    counts = {"input": len(table), **{s: int(by_split.get(s, 0)) for s in SPLITS}}
    rules = table.loc[table["split"] == "quarantine", "rule"].value_counts().to_dict()
    counts["quarantine_by_rule"] = {rule: int(n) for rule, n in sorted(rules.items())}
    if counts["input"] != sum(counts[s] for s in SPLITS):
        raise RuntimeError(f"records lost in prepare: {counts}")
    return counts


class _CheckAndTokenize:
    """Per actor: load the tokenizer once; per batch: check each record, tokenize the good."""

    def __init__(self, data: dict, model_dir: str):
        self.spec = DataSpec.model_validate(data)
        self.tokenizer = load_tokenizer(model_dir)
        self.labels = set(self.spec.labels or [])

    def __call__(self, batch):
        rows = [self._one(record) for record in batch.to_dict("records")]
        import pandas as pd

        return pd.DataFrame(rows)

    def _one(self, record: dict) -> dict:
        out = {
            "source": record["source"],
            "row": int(record["row"]),
            "fields": record["fields"],
            "prompt": None,
            "completion": None,
            "messages": None,
            "input_ids": [],
            "labels": [],
            "num_tokens": 0,
            "split": "quarantine",
            "rule": "",
            "reason": "",
        }
        rule, reason = self._check(record, out)
        if rule:
            return {**out, "rule": rule, "reason": reason}
        messages = messages_for(out["prompt"], self.spec.system_prompt)
        tokens = tokenize_example(self.tokenizer, messages, out["completion"])
        if len(tokens["input_ids"]) > self.spec.max_seq_len:
            return {
                **out,
                "rule": "too_long",
                "reason": f"{len(tokens['input_ids'])} tokens > data.max_seq_len "
                f"{self.spec.max_seq_len}",
            }
        return {
            **out,
            "messages": json.dumps(messages),
            "input_ids": tokens["input_ids"],
            "labels": tokens["labels"],
            "num_tokens": len(tokens["input_ids"]),
            "split": self._split(out["prompt"]),
        }

    def _check(self, record: dict, out: dict) -> tuple[str, str]:
        if record["error"]:
            return "malformed", record["error"]
        fields = json.loads(record["fields"])
        for role, name in (
            ("prompt", self.spec.prompt_field),
            ("completion", self.spec.completion_field),
        ):
            value = fields.get(name)
            if value is None:
                return "missing_field", f"no {role} field {name!r} (has: {sorted(fields)})"
            if not isinstance(value, str):
                return "wrong_type", f"{role} field {name!r} is {type(value).__name__}, not text"
            if not value.strip():
                return "empty_field", f"{role} field {name!r} is empty"
            out[role] = value.strip()
        if self.labels and out["completion"] not in self.labels:
            return "label_not_allowed", f"{out['completion']!r} is not in data.labels"
        return "", ""

    def _split(self, prompt: str) -> str:
        key = f"{self.spec.seed}:{' '.join(prompt.lower().split())}"
        bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
        return "eval" if bucket < self.spec.eval_fraction else "train"
