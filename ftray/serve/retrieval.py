"""Retrieval inside a Serve replica: the index version it searches (reopened when a newer one
is built, with no restart), and how many chunks each model gets.

A registry model trained with `data.retrieval` is served the way it was taught: its dataset's
`k` chunks, retrieved for the last user turn and put in the prompt by `with_context` (the
same function prepare used). The base model gets `serve.retrieval.base_k` (default none).
Search runs in a thread (an embedding forward pass and two index lookups), never on the
event loop.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import HTTPException

from ftray.errors import UserError
from ftray.rag.context import Chunk
from ftray.spec.serve import ServeRetrievalSpec
from ftray.store import Store


def retrieval_k(store: Store, card: dict) -> int:
    """The chunks a registry model is asked with: its dataset's `retrieval.k`, else 0."""
    dataset = card.get("dataset_id")
    if not dataset or not store.is_complete("datasets", dataset):
        return 0
    return int((store.manifest("datasets", dataset).get("retrieval") or {}).get("k", 0))


class ServedIndex:
    """The replica's index: opened on first use; with `index: latest`, checked for a newer
    version at most every `refresh_s` and swapped in once it has loaded."""

    def __init__(self, store: Store, settings: ServeRetrievalSpec):
        self.store, self.settings = store, settings
        self.retriever = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    async def current(self):
        """The retriever to search now; 503 when there is no index to serve."""
        if self.retriever is not None and not self._stale():
            return self.retriever
        async with self._lock:  # one replica loads one version once
            if self.retriever is None or self._stale():
                from ftray.rag.index import open_index, resolve_index_id

                try:
                    wanted = await asyncio.to_thread(
                        resolve_index_id, self.store, self.settings.index
                    )
                except UserError as error:
                    raise HTTPException(503, f"retrieval is unavailable: {error}") from None
                if self.retriever is None or self.retriever.index_id != wanted:
                    self.retriever = await asyncio.to_thread(open_index, self.store, wanted)
                self._checked = time.monotonic()
        return self.retriever

    async def search(self, retriever, query: str, k: int) -> list[Chunk]:
        """`retriever`'s `k` best chunks for `query`, searched in a thread."""
        return await asyncio.to_thread(retriever.search, query, k)

    def _stale(self) -> bool:
        return (
            self.settings.index == "latest"
            and time.monotonic() - self._checked > self.settings.refresh_s
        )
