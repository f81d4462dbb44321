"""Prometheus metrics of the Serve app, per model: requests, latency, tokens, errors, cache
use, shadow answers, feedback. `model` is the model that answered (a `production` request's
resolved arm); `split` ("true"/"false") says whether a canary or experiment chose it, so a
split's arms compare on the traffic the split itself sent them; feedback counts by the model
that gave the answer rated, so each arm has its own online quality signal.

They go out through Ray's metrics agent beside Ray Serve's own (`ray_serve_*`), as
`ray_ftray_*`, on each node's metrics export port.
"""

from __future__ import annotations

LATENCY_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]


class ServeMetrics:
    """The app's counters and histogram; created inside the replica."""

    def __init__(self):
        from ray.serve.metrics import Counter, Gauge, Histogram

        tags = ("model", "split")
        self.requests = Counter("ftray_requests", "Completed requests.", tag_keys=tags)
        self.latency = Histogram(
            "ftray_request_latency_s",
            "Request latency in seconds, queueing and batching included.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=tags,
        )
        self.prompt_tokens = Counter("ftray_prompt_tokens", "Prompt tokens.", tag_keys=tags)
        self.completion_tokens = Counter(
            "ftray_completion_tokens", "Generated tokens.", tag_keys=tags
        )
        self.errors = Counter(
            "ftray_errors",
            "Requests that failed after routing, by HTTP status (4xx: the request's fault).",
            tag_keys=(*tags, "status"),
        )
        cached = ("model",)
        self.cache_hits = Counter("ftray_cache_hits", "Completion cache hits.", tag_keys=cached)
        self.cache_misses = Counter(
            "ftray_cache_misses", "Completion cache misses.", tag_keys=cached
        )
        self.check_value = Gauge(
            "ftray_monitor_value",
            "Latest value of each `ftray monitor` check, per model.",
            tag_keys=("model", "check"),
        )
        self.check_alert = Gauge(
            "ftray_monitor_alert",
            "1 when the check's latest run alerted on the model.",
            tag_keys=("model", "check"),
        )
        shadowed = ("model",)
        self.shadow_requests = Counter(
            "ftray_shadow_requests", "Requests a shadow model answered.", tag_keys=shadowed
        )
        self.shadow_agreements = Counter(
            "ftray_shadow_agreements",
            "Shadow answers the same as production's (`ftray.serve.shadow.agree`).",
            tag_keys=shadowed,
        )
        self.shadow_skipped_count = Counter(
            "ftray_shadow_skipped",
            "Mirrored requests skipped: serve.shadow_max_in_flight shadows were running.",
            tag_keys=shadowed,
        )
        self.refusals = Counter(
            "ftray_refusals",
            "Answers that are empty or open by declining (`ftray monitor`'s refusal check).",
            tag_keys=tags,
        )
        self.schema_failures = Counter(
            "ftray_schema_failures",
            "Answers not valid JSON against data.output_schema (when the job has one).",
            tag_keys=tags,
        )
        self.shadow_failures = Counter(
            "ftray_shadow_failures", "Shadow generations that failed.", tag_keys=shadowed
        )
        self.shadow_latency = Histogram(
            "ftray_shadow_latency_s",
            "Shadow generation latency in seconds, queueing included.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=shadowed,
        )
        self.feedback_count = Counter(
            "ftray_feedback",
            "Feedback on answers, by the model that answered and its kind.",
            tag_keys=("model", "kind"),
        )
        self.rating_sum = Counter(
            "ftray_feedback_rating_sum",
            'Sum of the 1-5 ratings (over ftray_feedback{kind="rating"}: the mean).',
            tag_keys=("model",),
        )
        self.retrieval_latency = Histogram(
            "ftray_retrieval_latency_s",
            "Retrieval before generation, in seconds (embedding and index search).",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
            tag_keys=("model",),
        )
        self.batch_size = Histogram(
            "ftray_batch_size", "Requests per generation batch.", boundaries=[1, 2, 4, 8, 16, 32]
        )

    def done(
        self, model: str, split: bool, seconds: float, prompt_tokens: int, tokens: int
    ) -> None:
        """Count an answered request of `model`."""
        tags = _tags(model, split)
        self.requests.inc(tags=tags)
        self.latency.observe(seconds, tags=tags)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens, tags=tags)
        if tokens:
            self.completion_tokens.inc(tokens, tags=tags)

    def error(self, model: str, split: bool, status: int) -> None:
        """Count a request of `model` that failed with HTTP `status`."""
        self.errors.inc(tags={**_tags(model, split), "status": str(status)})

    def checks(self, found: list[dict]) -> None:
        """Re-export `ftray monitor`'s latest checks (runs before monitoring went per model
        have no `model`: `all`)."""
        for check in found:
            tags = {"model": check.get("model", "all"), "check": check["check"]}
            self.check_value.set(check["value"], tags=tags)
            self.check_alert.set(int(check["alert"]), tags=tags)

    def shadow(self, model: str, seconds: float, agreed: bool) -> None:
        """Count shadow `model`'s answer."""
        tags = {"model": model}
        self.shadow_requests.inc(tags=tags)
        self.shadow_latency.observe(seconds, tags=tags)
        if agreed:
            self.shadow_agreements.inc(tags=tags)

    def shadow_skipped(self, model: str) -> None:
        self.shadow_skipped_count.inc(tags={"model": model})

    def quality(self, model: str, split: bool, refused: bool, invalid: bool) -> None:
        """Count an answer of `model` that refused, or failed the output schema."""
        if refused:
            self.refusals.inc(tags=_tags(model, split))
        if invalid:
            self.schema_failures.inc(tags=_tags(model, split))

    def shadow_failed(self, model: str) -> None:
        self.shadow_failures.inc(tags={"model": model})

    def feedback(self, model: str, rating: int | None, flag: bool, correction: bool) -> None:
        """Count feedback on an answer of `model`: a rating (and its value), a flag, a
        correction; the online quality signal of each arm of a split."""
        if rating is not None:
            self.feedback_count.inc(tags={"model": model, "kind": "rating"})
            self.rating_sum.inc(rating, tags={"model": model})
        for kind, given in (("flag", flag), ("correction", correction)):
            if given:
                self.feedback_count.inc(tags={"model": model, "kind": kind})

    def retrieval(self, model: str, seconds: float) -> None:
        self.retrieval_latency.observe(seconds, tags={"model": model})

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def cache(self, model: str, *, hit: bool, cacheable: bool) -> None:
        if cacheable:
            (self.cache_hits if hit else self.cache_misses).inc(tags={"model": model})


def _tags(model: str, split: bool) -> dict[str, str]:
    return {"model": model, "split": "true" if split else "false"}
