"""Find and read source files into plain records, each tagged with where it came from.

Files are read one per Ray Data task, line by line (row by row), so a broken line becomes a
quarantined record with its location instead of a crashed job.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec

from ftray.errors import UserError
from ftray.spec import SourceSpec

_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class SourceFile:
    path: str  # as the user can find it: a local absolute path or a URI
    format: str
    origin: str = "train"  # 'train' (data.sources) or 'eval' (data.eval_sources)
    index: int = 0  # position among all files: with the row, orders records for dedup


# Records sort by (origin, file, row): earlier ones are kept when later ones duplicate them,
# so training data wins over an explicit eval set and the leak is removed from eval.
_FILE_STRIDE = 10**9


def record_order(origin: str, index: int, row: int) -> int:
    return (1 if origin == "eval" else 0) * 10**15 + index * _FILE_STRIDE + row


def expand_sources(
    sources: list[SourceSpec], origin: str = "train", key: str = "data.sources"
) -> list[SourceFile]:
    """Every file the sources name, globs expanded, in a stable order."""
    files: list[SourceFile] = []
    for index, source in enumerate(sources):
        fs, path = fsspec.core.url_to_fs(source.path)
        matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path]
        matches = [m for m in matches if fs.isfile(m) or _is_hf_dir(fs, m)]
        if not matches:
            raise UserError(
                f"{key}[{index}].path: no file matches {source.path!r} "
                f"(looked for {path}). Paths are relative to the folder you run ftray from."
            )
        for match in matches:
            fmt = source.format
            if fmt == "auto" and _is_hf_dir(fs, match):
                fmt = "hf"
            if fmt == "auto":
                fmt = _FORMATS.get(PurePosixPath(match).suffix.lower(), "")
                if not fmt:
                    raise UserError(
                        f"{key}[{index}]: cannot tell the format of {match!r} from its "
                        f"extension; set {key}[{index}].format to one of "
                        f"{[*sorted(set(_FORMATS.values())), 'hf']}."
                    )
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            uri = match if "://" not in source.path else f"{protocol}://{match}"
            files.append(SourceFile(uri, fmt, origin))
    return files


def number_files(train: list[SourceFile], evals: list[SourceFile]) -> list[SourceFile]:
    """All files with their global index set."""
    return [SourceFile(f.path, f.format, f.origin, i) for i, f in enumerate([*train, *evals])]


def _is_hf_dir(fs, path: str) -> bool:
    return fs.isdir(path) and fs.exists(f"{path.rstrip('/')}/dataset_info.json")


def read_records(file: SourceFile) -> list[dict]:
    """All records of one file: `{source, row, fields, error}`; `error` names a broken row."""
    fs, path = fsspec.core.url_to_fs(file.path)
    if file.format == "hf":
        from datasets import load_from_disk

        rows = load_from_disk(path)
        return [_record(file, i + 1, row) for i, row in enumerate(rows)]
    if file.format == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as handle:
            rows = pq.read_table(handle).to_pylist()
        return [_record(file, i + 1, row) for i, row in enumerate(rows)]
    with fs.open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return [_record(file, 0, None, f"file is not UTF-8 ({err.reason} at byte {err.start})")]
    if file.format == "csv":
        reader = csv.DictReader(io.StringIO(text))
        # row 1 is the header line, so data rows start at line 2
        return [_record(file, i + 2, row) for i, row in enumerate(reader)]
    if file.format == "json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            return [_record(file, err.lineno, None, f"bad JSON: {err.msg}")]
        if not isinstance(rows, list):
            return [_record(file, 1, None, "a .json source must hold a list of records")]
        return [_record(file, i + 1, row) for i, row in enumerate(rows)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(_record(file, number, json.loads(line)))
        except json.JSONDecodeError as err:
            records.append(_record(file, number, None, f"bad JSON line: {err.msg}"))
    return records


def _record(file: SourceFile, row: int, fields, error: str | None = None) -> dict:
    if fields is not None and not isinstance(fields, dict):
        fields, error = None, f"record is a {type(fields).__name__}, not an object"
    return {
        "source": file.path,
        "origin": file.origin,
        "order": record_order(file.origin, file.index, row),
        "row": row,
        "fields": json.dumps(fields, default=str) if fields is not None else None,
        "error": error,
    }
