"""The source files as one Ray Data datasource: a read task per jsonl byte range (so one
large file spreads over the cluster) and per file of the other formats."""

from __future__ import annotations

from functools import partial

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ftray.data.sources import JsonlScan, LineRange, SourceFile, read_jsonl_range, read_records

# The columns of a read record (`sources.read_records`), typed so blocks in which a column is
# all null (a range of broken lines has no `fields`) still concatenate with the others.
RECORD_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("origin", pa.string()),
        ("order", pa.int64()),
        ("row", pa.int64()),
        ("read", pa.int64()),
        ("fields", pa.string()),
        ("raw", pa.string()),
        ("error", pa.string()),
        ("blank", pa.bool_()),
    ]
)


class SourceRecords(Datasource):
    """Records of `files`; `scans` holds each jsonl file's byte ranges (`scan_jsonl`)."""

    def __init__(self, files: list[SourceFile], scans: dict[str, JsonlScan]):
        super().__init__()
        self.files, self.scans = files, scans

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        """One task per jsonl range and per other file; `parallelism` is not used: the
        ranges were cut by size when the files were hashed."""
        tasks = []
        for file in self.files:
            scan = self.scans.get(file.path)
            parts: list[LineRange | None] = list(scan.ranges) if scan else [None]
            for part in parts:
                size = part.end - part.start if part else None
                tasks.append(
                    ReadTask(
                        partial(_read, file, part, scan.lines if scan else 0),
                        BlockMetadata(None, size, None, input_files=(file.path,)),
                        schema=RECORD_SCHEMA,
                        per_task_row_limit=per_task_row_limit,
                    )
                )
        return tasks


def _read(file: SourceFile, part: LineRange | None, lines: int) -> list[pa.Table]:
    records = read_jsonl_range(file, part, lines) if part else read_records(file)
    return [pa.Table.from_pylist(records, schema=RECORD_SCHEMA)]
