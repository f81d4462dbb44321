"""Find and read source files into plain records, each tagged with where it came from.

Files are read line by line (row by row), so a broken line becomes a quarantined record with
its location instead of a crashed job. A jsonl file is read in byte ranges (`scan_jsonl`,
`read_jsonl_range`), one Ray Data task each, so one large file spreads over the cluster;
other formats are read whole, one task per file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

import fsspec

from ftray.errors import UserError
from ftray.spec import SourceSpec

_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class SourceFile:
    path: str  # as the user can find it: a local absolute path or a URI
    format: str
    origin: str = "train"  # 'train', 'eval' or 'validation': data.sources / eval_ / validation_
    index: int = 0  # position among all files: with the row, orders records for dedup
    precedence: int = 0  # the source's `precedence`: which record wins a conflict


# Records sort by (origin, file, row): earlier ones are kept when later ones duplicate them,
# so training data wins over an explicit eval (test) set, and both over a validation set:
# the leak is removed from the later set, and the test set never loses records to validation.
_FILE_STRIDE = 10**9
ORIGINS = ("train", "eval", "validation")


def record_order(origin: str, index: int, row: int) -> int:
    """A record's position across every source: by origin (train, eval, validation), then
    file, then row."""
    return ORIGINS.index(origin) * 10**15 + index * _FILE_STRIDE + row


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
            fmt: str = source.format
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
            files.append(SourceFile(uri, fmt, origin, precedence=source.precedence))
    return files


def number_files(*groups: list[SourceFile]) -> list[SourceFile]:
    """All files (training, eval, validation) with their global index set.

    Raises UserError when a file is named twice (two globs, or two of data.sources,
    data.eval_sources and data.validation_sources): its lines would be read twice and the
    per-file accounting fail.
    """
    files = [file for group in groups for file in group]
    seen: dict[str, str] = {}
    for file in files:
        if file.path in seen:
            raise UserError(
                f"{file.path} is named twice in the data sources ({seen[file.path]} and "
                f"{file.origin}); list each file once (narrow the globs, or keep it in one of "
                "data.sources, data.eval_sources and data.validation_sources)."
            )
        seen[file.path] = file.origin
    return [replace(file, index=i) for i, file in enumerate(files)]


def _is_hf_dir(fs, path: str) -> bool:
    return fs.isdir(path) and fs.exists(f"{path.rstrip('/')}/dataset_info.json")


def read_records(file: SourceFile) -> list[dict]:
    """One record per line (jsonl) or row (csv, json, parquet, hf) of one file.

    Each is `{source, origin, order, row, read, fields, raw, error, blank}`: `row` the line
    number (a csv row's first line; the position for json, parquet and hf), `read` how many
    lines or rows the file has (every record of the file carries it, for the accounting),
    `raw` the text as read, `error` why the line is broken, `blank` an empty line. Bytes
    are decoded per line, so a bad byte costs its own line only.
    """
    fs, path = fsspec.core.url_to_fs(file.path)
    if file.format in ("hf", "parquet"):
        return _table_records(file, fs, path)
    with fs.open(path, "rb") as handle:
        raw = handle.read()
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if file.format == "jsonl":
        return _jsonl_records(file, raw)
    if file.format == "csv":
        return _csv_records(file, raw)
    return _json_records(file, raw)


_BOM = b"\xef\xbb\xbf"


def split_lines(raw: bytes) -> list[bytes]:
    r"""The lines of a file's bytes: split at \n only (not at the Unicode line breaks that
    `str.splitlines` also splits at, which JSON strings may hold), each without its \r\n."""
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the file ends with a newline: no line after it
    return [line.removesuffix(b"\r") for line in lines]


def decode_line(line: bytes, what: str = "line") -> tuple[str, str | None]:
    r"""(text, error): the UTF-8 text of a line, or its bytes with the bad ones written as
    \xNN escapes and the reason it is not UTF-8."""
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError as err:
        text = line.decode("utf-8", errors="backslashreplace")
        return text, f"{what} is not UTF-8 ({err.reason} at byte {err.start + 1} of the {what})"


def _jsonl_records(
    file: SourceFile, raw: bytes, first: int = 1, read: int | None = None
) -> list[dict]:
    """The records of whole lines `raw`, numbered from `first`, of a file of `read` lines
    (default: `raw` is the whole file)."""
    lines = split_lines(raw)
    read = len(lines) if read is None else read
    records = []
    for number, line in enumerate(lines, start=first):
        text, error = decode_line(line)
        fields = None
        if error is None and not text.strip():
            records.append(_record(file, number, read, None, text, blank=True))
            continue
        if error is None:
            try:
                fields = json.loads(text)
            except json.JSONDecodeError as err:
                error = f"bad JSON line: {err.msg} (column {err.colno})"
        records.append(_record(file, number, read, fields, text, error))
    return records


@dataclass(frozen=True)
class LineRange:
    """Bytes [start, end) of a jsonl file: its reader owns every line that starts there
    (the last may run past `end`), the first of them numbered `first_line`."""

    start: int
    end: int
    first_line: int


@dataclass(frozen=True)
class JsonlScan:
    """One pass over a jsonl file: its sha256, how many lines it has, its byte ranges."""

    sha256: str
    lines: int
    ranges: tuple[LineRange, ...]


def scan_jsonl(file: SourceFile, range_bytes: int) -> JsonlScan:
    r"""Hash a jsonl file and cut it into ranges of about `range_bytes`, counting the \n
    before each cut so every range knows its first line's number (the digest reads every
    byte anyway; counting is a C loop on the same buffer)."""
    fs, path = fsspec.core.url_to_fs(file.path)
    size = fs.size(path)
    digest = hashlib.sha256()
    cuts = list(range(range_bytes, size, range_bytes))
    firsts = [1]  # the number of the first line starting at or after each cut
    newlines, pos, last = 0, 0, b"\n"
    with fs.open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            end = pos + len(chunk)
            while len(firsts) <= len(cuts) and cuts[len(firsts) - 1] <= end:
                at = cuts[len(firsts) - 1] - pos  # the cut, inside (or at the end of) chunk
                before = newlines + chunk.count(b"\n", 0, at)
                # a line starts at the cut only after a \n; else the next line is the first
                firsts.append(before + 1 + (chunk[at - 1 : at] != b"\n"))
            newlines += chunk.count(b"\n")
            pos, last = end, chunk[-1:]
    starts, ends = [0, *cuts], [*cuts, size]
    ranges = tuple(LineRange(*bounds) for bounds in zip(starts, ends, firsts, strict=True))
    return JsonlScan(digest.hexdigest(), newlines + (size > 0 and last != b"\n"), ranges)


def read_jsonl_range(file: SourceFile, part: LineRange, lines: int) -> list[dict]:
    """The records of the lines starting in `part` of a jsonl file of `lines` lines."""
    fs, path = fsspec.core.url_to_fs(file.path)
    with fs.open(path, "rb") as handle:
        if part.start:
            handle.seek(part.start - 1)
            handle.readline()  # the end of the line before: its own range reads it
        begin = handle.tell()
        if begin >= part.end:
            return []  # one line covers the whole range; the range it starts in reads it
        raw = handle.read(part.end - begin)
        if not raw.endswith(b"\n"):
            raw += handle.readline()  # the last line runs past the range: read it whole
    if part.start == 0 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    return _jsonl_records(file, raw, part.first_line, lines)


def _csv_records(file: SourceFile, raw: bytes) -> list[dict]:
    """Rows keyed by the header; a row with a bad byte, or another number of fields than
    the header, is quarantined by itself. A row may span lines (a quoted newline); its raw
    text is all of them."""
    # surrogateescape keeps bad bytes as lone surrogates, so the csv parser still finds the
    # row boundaries and each row can be checked for them alone.
    # newline="": the line ends csv expects (\n, \r\n, \r), not every Unicode line break
    lines = io.StringIO(raw.decode("utf-8", errors="surrogateescape"), newline="")
    consumed: list[str] = []

    def feed():
        for line in lines:
            consumed.append(line)
            yield line

    reader = csv.reader(feed())
    rows: list[tuple[int, list[str], str, str | None]] = []
    header: list[str] = []
    while True:
        start = reader.line_num + 1
        consumed.clear()
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            rows.append((start, [], "".join(consumed), f"bad CSV row: {err}"))
            continue
        if not header and values:  # the first line that is not empty
            header = values
            continue
        rows.append((start, values, "".join(consumed), None))
    records = []
    for number, values, text, error in rows:
        text = text.rstrip("\r\n")
        if _has_bad_bytes(text):
            text = _escape_bad_bytes(text)
            error = error or "row is not UTF-8 (invalid bytes)"
        if error is None and len(values) <= 1 and not "".join(values).strip():
            records.append(_record(file, number, len(rows), None, text, blank=True))
            continue
        fields = None
        if error is None and len(values) != len(header):
            error = f"row has {len(values)} fields, the header has {len(header)}"
        elif error is None:
            fields = dict(zip(header, values, strict=True))
        records.append(_record(file, number, len(rows), fields, text, error))
    return records


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _escape_bad_bytes(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _json_records(file: SourceFile, raw: bytes) -> list[dict]:
    """A .json file is one list of records: a bad byte or a syntax error breaks the whole
    file (one malformed record, counted as one row)."""
    text, error = decode_line(raw, "file")
    if error is None:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            error = f"bad JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        else:
            if not isinstance(rows, list):
                error = "a .json source must hold a list of records"
    if error is not None:
        return [_record(file, 1, 1, None, text, error)]
    return [
        _record(file, i + 1, len(rows), row, json.dumps(row, ensure_ascii=False))
        for i, row in enumerate(rows)
    ]


def _table_records(file: SourceFile, fs, path: str) -> list[dict]:
    if file.format == "hf":
        from datasets import load_from_disk

        rows = load_from_disk(path).to_list()
    else:
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as handle:
            rows = pq.read_table(handle).to_pylist()
    return [
        _record(file, i + 1, len(rows), row, json.dumps(row, default=str, ensure_ascii=False))
        for i, row in enumerate(rows)
    ]


def _record(
    file: SourceFile,
    row: int,
    read: int,
    fields,
    raw: str,
    error: str | None = None,
    blank: bool = False,
) -> dict:
    if error is None and not blank and not isinstance(fields, dict):
        fields, error = None, f"record is a {type(fields).__name__}, not an object"
    return {
        "source": file.path,
        "origin": file.origin,
        "order": record_order(file.origin, file.index, row),
        "row": row,
        "read": read,
        "fields": json.dumps(fields, default=str) if fields is not None else None,
        "raw": raw,
        "error": error,
        "blank": blank,
    }
