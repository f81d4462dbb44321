"""What a replica keeps of each answered request: its metrics, a sampled record for
`ftray monitor`, and the recent records that feedback (`POST /v1/feedback`) refers to."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from fastapi import HTTPException

from ftray.monitor.checks import is_empty_or_refusal, schema_failures
from ftray.monitor.sampler import Sampler
from ftray.serve.guard import FeedbackRequest
from ftray.serve.metrics import ServeMetrics
from ftray.serve.online import OnlineCounts
from ftray.spec import MonitorSpec
from ftray.store import Store, utc_stamp


@dataclass(frozen=True)
class Exchange:
    """A request on its way to an answer: `model` is the model that answers it, `said` the
    user's own text (what is sampled), `started` its `time.perf_counter()` on arrival,
    `split` whether a canary or experiment chose `model` for a `production` request."""

    model: str
    chat: bool
    said: str
    prompt_tokens: int
    started: float
    split: bool = False


class ExchangeLog:
    """Counts, samples and remembers a replica's answers; takes feedback on them."""

    def __init__(
        self, store: Store, monitor: MonitorSpec, metrics: ServeMetrics, schema: dict | None = None
    ):
        self.store, self.monitor, self.metrics = store, monitor, metrics
        self.schema = schema  # data.output_schema: answers are checked against it
        self.online = OnlineCounts(store)
        self.sampler = Sampler(store, monitor.model_dump(), tick=self._tick)

    def answered(self, exchange: Exchange, request_id: str, answer: dict) -> None:
        """Count the answer and offer it to the sampler."""
        latency = time.perf_counter() - exchange.started
        self.metrics.done(
            exchange.model, exchange.split, latency, exchange.prompt_tokens, answer["tokens"]
        )
        self.online.answered(exchange.model, exchange.split, latency)
        text = answer["text"]
        invalid = self.schema is not None and bool(schema_failures([text], self.schema))
        self.metrics.quality(exchange.model, exchange.split, is_empty_or_refusal(text), invalid)
        self.sampler.record(
            {
                "request_id": request_id,
                "time": utc_stamp(),
                "model": exchange.model,
                "split": exchange.split,
                "endpoint": "chat" if exchange.chat else "completions",
                "prompt": exchange.said,
                "output": answer["text"],
                "prompt_tokens": exchange.prompt_tokens,
                "completion_tokens": answer["tokens"],
                "latency_s": round(latency, 4),
                "finish_reason": answer["finish_reason"],
            }
        )

    def failed(self, model: str, split: bool, error: BaseException) -> None:
        """Count a request of `model` that failed with `error` after routing (an
        HTTPException's status, else 500)."""
        status = int(getattr(error, "status_code", 500))
        self.metrics.error(model, split, status)
        self.online.failed(model, split, status)
        self.sampler.start()  # the tick writes the counts, even with no answer yet

    async def drain(self) -> None:
        """Write what is buffered (on replica shutdown)."""
        await self.sampler.drain()
        await asyncio.to_thread(self.online.write)

    def shadowed(self, exchange: Exchange, request_id: str, answer: dict, mirrored: dict) -> None:
        """Count shadow `exchange.model`'s answer `mirrored` to request `request_id`, which
        production answered with `answer`, and keep the pair (always: the shadow's percent
        is its sample)."""
        from ftray.serve.shadow import agree

        latency = time.perf_counter() - exchange.started
        agreed = agree(answer["text"], mirrored["text"])
        self.metrics.shadow(exchange.model, latency, agreed)
        self.sampler.record(
            {
                "request_id": f"{request_id}-shadow",
                "time": utc_stamp(),
                "model": exchange.model,
                "split": False,
                "endpoint": "chat" if exchange.chat else "completions",
                "prompt": exchange.said,
                "output": mirrored["text"],
                "prompt_tokens": exchange.prompt_tokens,
                "completion_tokens": mirrored["tokens"],
                "latency_s": round(latency, 4),
                "finish_reason": mirrored["finish_reason"],
                "shadow_of": request_id,
                "control_output": answer["text"],
                "agreed": agreed,
            },
            keep=True,
        )

    async def feedback(self, body: FeedbackRequest) -> dict:
        """Store a rating, flag or correction for an earlier answer (by its `id`); the answer
        to the client. Corrections are accepted at once when monitor.accept_corrections is
        'auto'."""
        from ftray.monitor.feedback import decide, is_flagged, store_feedback

        if body.rating is None and not body.flag and body.correction is None:
            raise HTTPException(400, "feedback needs a rating, a flag or a correction")
        known = self.sampler.recent.get(body.request_id, {})
        clean = self.sampler.clean
        record = {
            "request_id": body.request_id,
            # the model that answered, as this replica recorded it (a `production`
            # request's arm), over what the client says
            "model": known.get("model") or body.model,
            "rating": body.rating,
            "flag": body.flag,
            "correction": clean(body.correction),
            "comment": clean(body.comment),
            "prompt": clean(body.prompt) or known.get("prompt"),
            "output": clean(body.output) or known.get("output"),
        }
        stored = await asyncio.to_thread(store_feedback, self.store, record)
        model = str(record["model"] or "unknown")
        self.metrics.feedback(model, body.rating, body.flag, bool(body.correction))
        split = bool(known.get("split"))
        self.online.feedback(model, split, body.rating, body.flag, bool(body.correction))
        if record["correction"] and self.monitor.accept_corrections == "auto":
            await asyncio.to_thread(decide, self.store, stored["feedback_id"], "accept", by="auto")
        return {
            "id": stored["feedback_id"],
            "object": "feedback",
            "flagged": is_flagged(stored),
            "matched_request": bool(known),
        }

    def _tick(self) -> None:
        """Every flush interval: write the online counts, refresh the monitor gauges."""
        self.online.write()
        self._publish_checks()

    def _publish_checks(self) -> None:
        """Export the latest `ftray monitor` results as gauges (read on each flush tick)."""
        if self.store.fs.exists(self.store.path("monitor", "latest.json")):
            self.metrics.checks(self.store.read_json("monitor", "latest.json")["checks"])
