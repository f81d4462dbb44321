"""Reading the Serve app's sampled requests back (`monitor/samples/`), for `ftray monitor`,
`ftray models shadow-report` and the review of shadow pairs (`ftray.review.shadow_pairs`)."""

from __future__ import annotations

import time

from ftray.monitor.reference import UNRECORDED
from ftray.store import Store, utc_stamp

# Columns older sample files may lack, and what their rows are taken to hold.
OPTIONAL = {
    "model": UNRECORDED,
    "split": False,
    "shadow_of": None,
    "control_output": None,
    "agreed": None,
}


def load_samples(store: Store, since: float) -> tuple:
    """Sampled requests logged at or after `since` (epoch seconds), as a DataFrame, and the
    sample files that could not be read, as (path, reason): a truncated or foreign file is
    skipped, never the end of the run. A file without `model` or `split` (written before the
    sampler recorded them) reads as OPTIONAL says."""
    import pandas as pd
    import pyarrow.parquet as pq

    from ftray.monitor.sampler import COLUMNS

    start = utc_stamp(since)
    frames, unreadable = [], []
    for path in sample_files(store, time.strftime("%Y-%m-%d", time.gmtime(since))):
        try:
            with store.fs.open(path, "rb") as handle:
                frame = pq.read_table(handle).to_pandas()
        except (OSError, ValueError) as err:  # pyarrow's errors derive from these
            unreadable.append((path, unreadable_reason(err)))
            continue
        missing = [c for c in COLUMNS if c not in frame.columns and c not in OPTIONAL]
        if missing:
            unreadable.append((path, f"no column(s) {', '.join(missing)}"))
            continue
        frames.append(frame.assign(**{k: v for k, v in OPTIONAL.items() if k not in frame}))
    names = [*COLUMNS, *(k for k in OPTIONAL if k not in COLUMNS)]
    frames = [frame[names] for frame in frames]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=names)
    table = table[table["time"] >= start].reset_index(drop=True)
    # a null in a file that has the column reads as that column's default too
    table["model"] = [str(m) if isinstance(m, str) else UNRECORDED for m in table["model"]]
    table["split"] = [bool(v and v == v) for v in table["split"]]  # None, NaN: False
    return table, unreadable


def sample_files(store: Store, first_day: str = "") -> list[str]:
    """The sample files of days `first_day` (YYYY-MM-DD) and later, oldest day first. Each is
    written once, whole, under a name of its own (`ftray.monitor.sampler`), and never changes."""
    folder = store.path("monitor", "samples")
    if not store.fs.exists(folder):
        return []
    return [
        path
        for path in sorted(store.fs.find(folder))
        if path.endswith(".parquet") and path.rsplit("date=", 1)[-1].split("/", 1)[0] >= first_day
    ]


def unreadable_reason(err: Exception) -> str:
    """Why a sample file could not be read, in one short line."""
    return str(err).splitlines()[0][:200]
