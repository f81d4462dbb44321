"""`ftray data list|show|diff`: read a project's datasets back, list what was quarantined,
and compare two versions."""

from __future__ import annotations

import json

from ftray.data.checks import exact_key, prompt_key
from ftray.errors import UserError
from ftray.store import Store

EXAMPLE_SPLITS = ("train", "validation", "eval")


def list_datasets(store: Store) -> list[dict]:
    """Manifests of the project's finished datasets, oldest first."""
    return store.manifests("datasets")


def show(store: Store, dataset_id: str) -> dict:
    """Manifest and report of one dataset, and the registered models trained on it (the
    other direction of the model card's `dataset_id`)."""
    from ftray.registry import list_models

    _require(store, dataset_id)
    manifest = store.manifest("datasets", dataset_id)
    report = store.read_json("datasets", dataset_id, "report.json")
    models = [
        {"model_id": card["model_id"], "stage": card["stage"], "run_id": card["run_id"]}
        for card in list_models(store)
        if card["dataset_id"] == dataset_id
    ]
    return {"manifest": manifest, "report": report, "models": models}


def diff(store: Store, old: str, new: str, samples: int = 5) -> dict:
    """Examples added, removed and replaced from `old` to `new`, by normalised prompt +
    completion; replaced: the same prompt with another completion (a correction, or the
    rule 'conflict' choosing another answer), with the location of the one that won."""
    before, after = _examples(store, old), _examples(store, new)
    added_keys, removed_keys = after.keys() - before.keys(), before.keys() - after.keys()
    old_answers: dict[str, list[str]] = {}
    for key in removed_keys:
        old_answers.setdefault(before[key]["prompt_key"], []).append(key)
    replaced, replacing = [], set()
    for key in added_keys:
        example = after[key]
        olds = [before[k] for k in sorted(old_answers.get(example["prompt_key"], []))]
        if olds:
            replacing |= {key, *(_key(o) for o in olds)}
            replaced.append(
                {
                    "prompt": example["prompt"],
                    "old_completion": [o["completion"] for o in olds],
                    "new_completion": example["completion"],
                    "old": [f"{o['source']}:{o['row']} ({o['split']})" for o in olds],
                    "new": f"{example['source']}:{example['row']} ({example['split']})",
                    "source": example["source"],
                    "row": example["row"],
                }
            )
    added = [_public(after[key]) for key in added_keys - replacing]
    removed = [_public(before[key]) for key in removed_keys - replacing]
    moved = [
        {**_public(after[key]), "from": before[key]["split"]}
        for key in after.keys() & before.keys()
        if after[key]["split"] != before[key]["split"]
    ]
    return {
        "old": old,
        "new": new,
        "counts": {
            "old": len(before),
            "new": len(after),
            "added": len(added),
            "removed": len(removed),
            "replaced": len(replaced),
            "changed_split": len(moved),
            "unchanged": len(before.keys() & after.keys()) - len(moved),
        },
        "added": sorted(added, key=_where)[:samples],
        "removed": sorted(removed, key=_where)[:samples],
        "replaced": sorted(replaced, key=_where)[:samples],
        "changed_split": sorted(moved, key=_where)[:samples],
    }


def quarantined(store: Store, dataset_id: str, rule: str | None = None) -> list[dict]:
    """Every quarantined line (or only `rule`'s), in source order: source, row, rule,
    reason and the raw text read."""
    import pyarrow.dataset as pds

    _require(store, dataset_id)
    path = store.path("datasets", dataset_id, "quarantine")
    if not store.fs.exists(path):
        rows = []  # nothing was quarantined
    else:
        columns = ["source", "row", "rule", "reason", "raw"]
        rows = pds.dataset(path, filesystem=store.fs, format="parquet").to_table(columns=columns)
        rows = rows.to_pylist()
    known = store.manifest("datasets", dataset_id)["counts"]["quarantine_by_rule"]
    if rule is not None and rule not in known:
        raise UserError(
            f"no line of {dataset_id} was quarantined by rule {rule!r}; its rules are: "
            f"{', '.join(f'{r} ({n})' for r, n in known.items()) or '(none)'}."
        )
    picked = [r for r in rows if rule is None or r["rule"] == rule]
    return sorted(picked, key=_where)


def format_quarantined(rows: list[dict]) -> str:
    """One entry per line: `file:line  rule  reason`, then the raw text, indented."""
    lines = []
    for row in rows:
        lines.append(f"{row['source']}:{row['row']}  {row['rule']}  {row['reason']}")
        raw = (row["raw"] or "").replace("\n", "\n    ")  # a csv row may span lines
        lines.append(f"    {raw}")
    lines.append(f"{len(rows)} quarantined line(s)")
    return "\n".join(lines)


def format_show(info: dict) -> str:
    """`ftray data show`'s text for what `show` returned."""
    manifest, report = info["manifest"], info["report"]
    counts = manifest["counts"]
    lines = [
        f"{manifest['dataset_id']}  created {manifest['created_at']}",
        f"  sources: {', '.join(s['path'] for s in manifest['sources'])}",
        f"  records: {counts['input']} in → {counts['train']} train, "
        f"{counts.get('validation', 0)} validation, {counts['eval']} eval, "
        f"{counts['quarantine']} quarantined",
    ]
    for file in manifest.get("files", []):  # datasets of PREPARE_VERSION 3 on
        unit = "lines" if file["format"] == "jsonl" else "rows"
        lines.append(
            f"    {file['path']}: {file['read']} {unit} read = {file['train']} train + "
            f"{file.get('validation', 0)} validation + {file['eval']} eval + "
            f"{file['quarantine']} quarantined + {file['blank']} blank"
        )
    for rule, n in sorted(report["counts_by_rule"].items()):
        lines.append(f"    {rule}: {n}")
        for sample in report["samples_by_rule"].get(rule, []):
            lines.append(f"      {sample['source']}:{sample['row']}  {sample['reason']}")
    lines.append(f"  PII redacted: {report['pii_redacted']}, truncated: {report['truncated']}")
    lines.append(f"  tokens: {json.dumps(report['tokens'])}")
    lines.append(f"  checks: {json.dumps(report['checks'])}")
    models = [f"{m['model_id']} ({m['stage']}, run {m['run_id']})" for m in info["models"]]
    lines.append(f"  models trained on it: {', '.join(models) or 'none yet'}")
    if counts["quarantine"]:
        lines.append(
            f"  every quarantined line: ftray data show JOB.yaml {manifest['dataset_id']} "
            "--quarantine [RULE]"
        )
    return "\n".join(lines)


def _examples(store: Store, dataset_id: str) -> dict[str, dict]:
    import pyarrow.dataset as pds

    _require(store, dataset_id)
    found = {}
    for split in EXAMPLE_SPLITS:
        path = store.path("datasets", dataset_id, split)
        if not store.fs.exists(path):
            continue
        columns = ["source", "row", "prompt", "completion", "messages"]
        table = pds.dataset(path, filesystem=store.fs, format="parquet").to_table(columns=columns)
        for row in table.to_pylist():
            found[_key(row)] = {**row, "split": split, "prompt_key": prompt_key(row["messages"])}
    return found


def _key(example: dict) -> str:
    return exact_key(f"{example['prompt']}\n{example['completion']}")


def _public(example: dict) -> dict:
    """An example as `diff` lists it (without the chat and the key it was matched by)."""
    return {k: v for k, v in example.items() if k not in ("messages", "prompt_key")}


def _where(example: dict) -> tuple:
    return (example["source"], example["row"])


def _require(store: Store, dataset_id: str) -> None:
    if not store.is_complete("datasets", dataset_id):
        known = [m["dataset_id"] for m in list_datasets(store)] or ["(none yet)"]
        raise UserError(
            f"no dataset {dataset_id!r} in {store.uri('datasets')}; there are: "
            f"{', '.join(known)}. `ftray data list JOB.yaml` shows them."
        )
