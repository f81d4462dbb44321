"""A shadow model's recorded pairs as what a pairwise queue reviews (`ftray review --shadow`):
the same production request answered by production and by the shadow model, which the Serve
app keeps as a sample row of the shadow model (`shadow_of`, the production response id;
`output`, the shadow's answer; `control_output`, production's; `agreed`: see
`ftray.serve.shadow`), redacted like every sample.

The shadow plays the candidate and production the incumbent, so the ratings, statistics,
report and preference pairs are the evaluation's. An item is keyed by its production response
id, never by a position, and pairs keep arriving while reviewers rate: every page re-reads the
sample files written since (the files it has read never change), each new pair falls into
each reviewer's order at a place drawn for it alone, and a rating keeps naming its pair.
Every pair ever recorded counts (no time window), and pairs whose answers agree are left
out: they are the same text but for case and spacing, so there is nothing to prefer; the
win rate is the shadow's among the answers that differ.
"""

from __future__ import annotations

import threading

from ftray.errors import UserError
from ftray.monitor.samples import sample_files, unreadable_reason
from ftray.registry import get_model, history
from ftray.review.ratings import Pair, RatingLog, latest
from ftray.review.report import write_shadow_report
from ftray.review.stats import summarize
from ftray.store import Store, check_name

COLUMNS = ("time", "model", "prompt", "output", "shadow_of", "control_output", "agreed")


class ShadowPairs:
    """The pairs recorded for shadow model `model_id`, read incrementally."""

    arms = ("shadow", "production")

    def __init__(self, store: Store, model_id: str):
        self.store, self.model_id = store, check_name(model_id, "shadow model id")
        self.key = f"shadow:{model_id}"
        self.folder: tuple[str, ...] = ("shadows", model_id)
        self.record = {"shadow_model": model_id}
        self.what = f"shadow {model_id} against production"
        self._files: dict[str, list[dict]] = {}  # sample file → this model's pairs in it
        self.unreadable: dict[str, str] = {}  # sample file → why it was skipped
        self._lock = threading.Lock()

    def pairs(self) -> list[Pair]:
        """The recorded pairs whose answers differ, oldest first; a UserError saying why when
        none was ever recorded."""
        return [
            Pair(r["shadow_of"], r["prompt"], r["output"], r["control_output"])
            for r in self.recorded()
            if not r["agreed"]
        ]

    def recorded(self) -> list[dict]:
        """Every recorded pair of the model, oldest first, the first of any repeated id."""
        for path in sample_files(self.store):
            if path not in self._files and path not in self.unreadable:
                self._read(path)
        with self._lock:
            rows = sorted(
                (r for rows in self._files.values() for r in rows),
                key=lambda r: (r["time"], r["shadow_of"]),
            )
        first: dict[str, dict] = {}
        for row in rows:
            first.setdefault(row["shadow_of"], row)
        if not first:
            raise self._none_recorded()
        return list(first.values())

    def counts(self) -> dict:
        """How many pairs were recorded, agreed (left out) and are queued for review."""
        rows = self.recorded()
        agreed = sum(bool(r["agreed"]) for r in rows)
        return {
            "recorded": len(rows),
            "agreed": agreed,
            "queued": len(rows) - agreed,
            "unreadable_sample_files": len(self.unreadable),
        }

    def _read(self, path: str) -> None:
        import pyarrow.parquet as pq

        try:
            with self.store.fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
        except (OSError, ValueError) as err:  # pyarrow's errors derive from these
            with self._lock:
                self.unreadable[path] = unreadable_reason(err)
            return
        rows: list[dict] = []
        if "shadow_of" in table.column_names:  # older sample files have no shadow pairs
            missing = [c for c in COLUMNS if c not in table.column_names]
            if missing:
                with self._lock:
                    self.unreadable[path] = f"no column(s) {', '.join(missing)}"
                return
            rows = [
                {**r, "shadow_of": str(r["shadow_of"])}
                for r in table.select(list(COLUMNS)).to_pylist()
                if r["shadow_of"] is not None and r["model"] == self.model_id
            ]
        with self._lock:
            self._files[path] = rows

    def _none_recorded(self) -> UserError:
        was_shadow = any(
            e["action"] == "shadow" and e["model_id"] == self.model_id for e in history(self.store)
        )
        if not was_shadow:
            get_model(self.store, self.model_id)  # unknown: its error lists the registered
            return UserError(
                f"{self.model_id} has never been a shadow model, so no pairs of it were "
                f"recorded: `ftray models shadow JOB.yaml {self.model_id} --percent P` mirrors "
                "a share of production's users to it; `ftray models history JOB.yaml` lists "
                "the shadows so far."
            )
        return UserError(
            f"no recorded pairs of shadow {self.model_id} in "
            f"{self.store.uri('monitor', 'samples')} yet: the Serve app keeps one per mirrored "
            "request, written every monitor.flush_interval_s; `ftray models shadow-report "
            "JOB.yaml` counts them. Try again once some are in."
        )


def shadow_results(store: Store, model_id: str, level: float = 0.95) -> dict:
    """The ratings of a shadow's pairs summarized like an evaluation's (the shadow as the
    candidate, production as the incumbent) with the pair counts; (re)writes
    `shadows/<model-id>/reviews/report.md|html`."""
    source = ShadowPairs(store, model_id)
    counts = source.counts()
    ratings = latest(RatingLog(store, source).all())
    found = {
        "shadow_model": model_id,
        "arms": {"candidate": model_id, "incumbent": "production"},
        "pairs": counts,
        "human": summarize(ratings, level),
    }
    write_shadow_report(store, found, ratings)
    return found
