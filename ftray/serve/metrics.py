"""Prometheus metrics of the Serve app, per model: requests, latency, tokens, errors, cache
use. `model` is the model that answered (a `production` request's resolved arm); `split`
("true"/"false") says whether a canary or experiment chose it, so a split's arms compare on
the traffic the split itself sent them.

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

    def error(self, model: str, split: bool, error: BaseException) -> None:
        """Count a request of `model` that failed with `error` (an HTTPException's status,
        else 500)."""
        status = str(getattr(error, "status_code", 500))
        self.errors.inc(tags={**_tags(model, split), "status": status})

    def checks(self, found: list[dict]) -> None:
        """Re-export `ftray monitor`'s latest checks (runs before monitoring went per model
        have no `model`: `all`)."""
        for check in found:
            tags = {"model": check.get("model", "all"), "check": check["check"]}
            self.check_value.set(check["value"], tags=tags)
            self.check_alert.set(int(check["alert"]), tags=tags)

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def cache(self, model: str, *, hit: bool, cacheable: bool) -> None:
        if cacheable:
            (self.cache_hits if hit else self.cache_misses).inc(tags={"model": model})


def _tags(model: str, split: bool) -> dict[str, str]:
    return {"model": model, "split": "true" if split else "false"}
