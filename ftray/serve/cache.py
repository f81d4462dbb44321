"""The completion cache: identical deterministic requests answered from memory.

Only greedy (temperature 0) requests are cached: a sampled answer is meant to vary. Keys are
the model, the rendered prompt (system prompt and chat template included) and the decoding
parameters; entries expire after a TTL and the least recently used go first past the size.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class CompletionCache:
    """LRU + TTL map from (model, prompt, max_tokens) to an answer, with hit/miss counts."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._entries: OrderedDict[tuple, tuple[float, dict]] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(model: str, prompt: str, max_tokens: int, temperature: float) -> tuple | None:
        """The cache key, or None when the request must not be cached (it samples)."""
        return None if temperature else (model, prompt, max_tokens)

    def get(self, key: tuple | None) -> dict | None:
        if key is None:
            return None
        entry = self._entries.get(key)
        if entry is None or self.clock() - entry[0] > self.ttl_s:
            self._entries.pop(key, None)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: tuple | None, answer: dict) -> None:
        if key is None or self.max_entries == 0:
            return
        self._entries[key] = (self.clock(), answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def stats(self) -> dict:
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses}
