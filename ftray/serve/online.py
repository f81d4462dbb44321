"""A replica's online counts per model, by minute, written to the store for automatic
rollout decisions (`ftray.rollout`).

Prometheus holds the same signals for dashboards, but a decision must be reproducible from
the store alone (no Prometheus server is needed to run `ftray models watch`). Each replica
keeps, per (model, whether a split chose it, UTC minute): answered requests, errors (5xx:
the model's fault; 4xx: the request's), a latency histogram, feedback ratings, flags and
corrections; and writes the whole table (the last `KEEP_HOURS`) to
`monitor/online/<replica>.json` on the sampler's tick. Counts from several replicas add up.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

from ftray.serve.metrics import LATENCY_BOUNDARIES
from ftray.store import Store, event_id

KEEP_HOURS = 48
FIELDS = ("requests", "errors", "client_errors", "ratings", "rating_sum", "flags", "corrections")


def minute(seconds: float | None = None) -> str:
    """The UTC minute of `seconds` (default: now), as the counts key it: `YYYY-MM-DDTHH:MM`."""
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(seconds))


def empty() -> dict:
    """The counts of one (model, split, minute)."""
    return {**dict.fromkeys(FIELDS, 0), "latency": [0] * (len(LATENCY_BOUNDARIES) + 1)}


class OnlineCounts:
    """One replica's counts; `write` puts them in the store."""

    def __init__(self, store: Store):
        self.store = store
        self.replica = event_id()  # a new file per replica life: counts only ever add up
        self.counts: defaultdict[tuple[str, bool, str], dict] = defaultdict(empty)
        self._written = ""  # the table last written: an idle replica writes nothing

    def answered(self, model: str, split: bool, seconds: float) -> None:
        row = self.counts[(model, split, minute())]
        row["requests"] += 1
        row["latency"][_bucket(seconds)] += 1

    def failed(self, model: str, split: bool, status: int) -> None:
        self.counts[(model, split, minute())]["errors" if status >= 500 else "client_errors"] += 1

    def feedback(self, model: str, split: bool, rating: int | None, flag: bool, correction: bool):
        row = self.counts[(model, split, minute())]
        if rating is not None:
            row["ratings"] += 1
            row["rating_sum"] += rating
        row["flags"] += int(flag)
        row["corrections"] += int(correction)

    def write(self) -> None:
        """Write the last KEEP_HOURS of counts (older ones are dropped from memory too), when
        they changed since the last write. Runs in a thread beside the event loop that
        counts: it reads a snapshot."""
        snapshot = dict(self.counts)  # one C-level copy: the loop may add keys meanwhile
        oldest = minute(time.time() - KEEP_HOURS * 3600)
        for key in [k for k in snapshot if k[2] < oldest]:
            self.counts.pop(key, None)
            del snapshot[key]
        if not snapshot:
            return
        rows = [
            {"model": model, "split": split, "minute": at, **counts}
            for (model, split, at), counts in sorted(snapshot.items())
        ]
        table = {"replica": self.replica, "rows": rows}
        text = json.dumps(table, sort_keys=True)
        if text != self._written:
            self.store.write_json(table, "monitor", "online", f"{self.replica}.json")
            self._written = text


def _bucket(seconds: float) -> int:
    return next(
        (i for i, edge in enumerate(LATENCY_BOUNDARIES) if seconds <= edge), len(LATENCY_BOUNDARIES)
    )
