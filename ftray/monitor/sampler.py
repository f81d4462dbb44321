"""Request sampling inside a Serve replica: a share of requests and answers, redacted, buffered
and written as date-partitioned parquet, off the request path.

`record` only appends to memory (and never raises); a background task writes the buffer
every `flush_rows` samples or `flush_interval_s` seconds into
`monitor/samples/date=YYYY-MM-DD/<time>-<id>.parquet`. A failed write is logged and counted,
the samples of that write are dropped: monitoring never blocks or fails a request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict

from ftray.data.checks import redact_pii
from ftray.store import Store, event_id

log = logging.getLogger(__name__)
COLUMNS = (
    "request_id",
    "time",
    "model",
    "endpoint",
    "prompt",
    "output",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "finish_reason",
)
# Written too, but not required of older sample files: whether a canary or experiment chose
# the row's `model` for a `production` request; of a shadow model's answer, the production
# answer's request id and text and whether the two agree (`ftray.serve.shadow`).
ROUTING_COLUMNS = ("split", "shadow_of", "control_output", "agreed")


class Sampler:
    """Buffers sampled requests and writes them; remembers recent requests for feedback."""

    def __init__(self, store: Store, settings: dict, recent: int = 10_000, tick=None):
        self.store = store
        self.rate = settings["sample_rate"]
        self.redact = settings["redact_pii"]
        self.flush_rows = settings["flush_rows"]
        self.flush_interval_s = settings["flush_interval_s"]
        self.buffer: list[dict] = []
        self.recent: OrderedDict[str, dict] = OrderedDict()
        self.recent_size = recent
        self.written = self.failed = 0
        self._task: asyncio.Task | None = None
        self._flushing: set[asyncio.Task] = set()
        self.tick = tick  # also called every flush interval (the app refreshes gauges)

    def clean(self, text: str | None) -> str | None:
        return redact_pii(text) if self.redact and text else text

    def record(self, sample: dict, keep: bool = False) -> None:
        """Remember the request for feedback; keep it as a sample with probability `rate`
        (always when `keep`)."""
        try:
            row: dict = {
                **sample,
                "prompt": self.clean(sample["prompt"]),
                "output": self.clean(sample["output"]),
                **(
                    {"control_output": self.clean(sample["control_output"])}
                    if "control_output" in sample
                    else {}
                ),
            }
            self.recent[row["request_id"]] = row
            while len(self.recent) > self.recent_size:
                self.recent.popitem(last=False)
            self.start()
            if keep or (self.rate and random.random() < self.rate):
                self.buffer.append(row)
                if len(self.buffer) >= self.flush_rows:
                    task = asyncio.get_running_loop().create_task(self.flush())
                    self._flushing.add(task)
                    task.add_done_callback(self._flushing.discard)
        except Exception:  # sampling must never fail a request
            log.exception("request sampling failed; the request is unaffected")

    async def flush(self) -> None:
        """Write what is buffered (in a thread); failures are logged, never raised."""
        rows, self.buffer = self.buffer, []
        if not rows:
            return
        try:
            await asyncio.to_thread(self._write, rows)
            self.written += len(rows)
        except Exception:  # a storage outage must not reach requests
            self.failed += len(rows)
            log.exception("writing %d request samples failed; they are dropped", len(rows))

    async def drain(self) -> None:
        """Finish the writes under way and write what is left (on replica shutdown)."""
        await asyncio.gather(*self._flushing, return_exceptions=True)
        await self.flush()

    def stats(self) -> dict:
        return {
            "rate": self.rate,
            "buffered": len(self.buffer),
            "written": self.written,
            "failed": self.failed,
        }

    def start(self) -> None:
        """Start the periodic writes (and ticks), if not running."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._periodic())

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()
            if self.tick is not None:
                try:
                    await asyncio.to_thread(self.tick)
                except Exception:  # a bad results file must not stop sampling
                    log.exception("refreshing the monitoring gauges failed")

    def _write(self, rows: list[dict]) -> None:
        import pyarrow as pa

        columns = (*COLUMNS, *ROUTING_COLUMNS)
        table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
        day = time.strftime("%Y-%m-%d", time.gmtime())
        name = f"{event_id()}.parquet"  # unique per writer; `time` in the rows orders them
        self.store.write_parquet(table, "monitor", "samples", f"date={day}", name)
