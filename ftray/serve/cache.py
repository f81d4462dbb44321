"""The completion cache: identical deterministic requests answered from memory.

Only greedy (temperature 0) requests are cached: a sampled answer is meant to vary. Keys are
the model, the request as sent (its messages or prompt) and the decoding parameters: within a
replica the chat template and a model's system prompt are fixed, so the request decides the
rendered prompt, and a hit is answered before anything renders or tokenizes it. Entries
expire after a TTL and the least recently used go first past the size.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

# What a hit answers with: the engine's answer, the prompt's tokens (for `usage`) and the
# retrieved chunks it was asked with (for `sources`; empty without retrieval).
Cached = tuple[dict, int, list]


class CompletionCache:
    """LRU + TTL map from (model, request, max_tokens) to an answer, with hit/miss counts."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._entries: OrderedDict[tuple, tuple[float, Cached]] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(model: str, asked: Hashable, max_tokens: int, temperature: float) -> tuple | None:
        """The cache key of a request for `model` whose messages or prompt are `asked`, or
        None when it must not be cached (it samples)."""
        return None if temperature else (model, asked, max_tokens)

    def get(self, key: tuple | None) -> Cached | None:
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

    def put(self, key: tuple | None, answer: Cached) -> None:
        if key is None or self.max_entries == 0:
            return
        self._entries[key] = (self.clock(), answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def stats(self) -> dict:
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses}
