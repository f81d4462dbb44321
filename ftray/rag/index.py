"""Searching an index `ftray index` built, in-process (no Ray: the Serve app and evaluation
call it), and comparing index versions (`ftray index show|diff`).

`open_index` loads the LanceDB table, the bm25s index and the embedder once. `search` ranks
the best `candidates` chunks by BM25 and by cosine similarity of MiniLM vectors, and fuses the
two rankings by reciprocal rank fusion (Cormack et al., 2009): a chunk scores
sum(1 / (rrf_k + rank)) over the rankings it is in. RRF needs no score calibration between
BM25's unbounded scores and cosine similarities, which is why it is the default.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import numpy as np

from ftray.errors import UserError
from ftray.rag.context import Chunk
from ftray.rag.embed import Embedder, embedder_path
from ftray.spec.index import IndexSpec
from ftray.store import Store, check_name

INDEXES = "indexes"  # the store folder of index versions
TABLE = "chunks"  # the LanceDB table in each version's lance/ folder
# bm25s's default pattern drops one-character tokens, and facts hinge on them ("Tier 2").
BM25_TOKENS = r"(?u)\b\w+\b"


def bm25_tokens(texts: list[str]) -> list[list[str]]:
    """Lower-cased word tokens without English stop words, for indexing and queries alike."""
    import bm25s

    return bm25s.tokenize(
        texts, token_pattern=BM25_TOKENS, stopwords="en", return_ids=False, show_progress=False
    )


def resolve_index_id(store: Store, index_id: str = "latest") -> str:
    """`index_id` if that index is finished; 'latest': the newest finished index."""
    if index_id == "latest":
        manifests = store.manifests(INDEXES)
        if not manifests:
            raise UserError(
                f"no index in {store.uri()} yet; `ftray index JOB.yaml` builds one from the "
                "job's `index:` section."
            )
        return manifests[-1]["index_id"]
    check_name(index_id, "index id")
    if not store.is_complete(INDEXES, index_id):
        known = [m["index_id"] for m in store.manifests(INDEXES)]
        raise UserError(
            f"no index {index_id!r} in {store.uri()}; known: {', '.join(known) or 'none'} "
            "(`ftray index show JOB.yaml` lists the latest)."
        )
    return index_id


def rrf(rankings: Sequence[Sequence[int]], k: int) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: (row, score) best first; ties keep the earlier ranking's order."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            scores[row] = scores.get(row, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


class HybridRetriever:
    """A `Retriever` over one index version: BM25 and dense rankings fused."""

    def __init__(self, store: Store, index_id: str, settings: IndexSpec | None = None):
        import bm25s
        import lancedb

        self.index_id = resolve_index_id(store, index_id)
        self.manifest = store.manifest(INDEXES, self.index_id)
        recorded = store.read_json(INDEXES, self.index_id, "index_spec.json")
        # Query-time settings may change without re-indexing; what was embedded may not.
        self.settings = settings or IndexSpec(**recorded)
        self._table = lancedb.connect(store.uri(INDEXES, self.index_id, "lance")).open_table(TABLE)
        columns = self._table.to_arrow().select(["id", "source", "text"]).to_pydict()
        self._ids, self._sources, self._texts = columns["id"], columns["source"], columns["text"]
        self._row_of = {chunk: row for row, chunk in enumerate(self._ids)}  # as BM25 numbers them
        with tempfile.TemporaryDirectory() as tmp:
            self._bm25 = bm25s.BM25.load(str(store.get_dir(tmp, INDEXES, self.index_id, "bm25")))
        self._embedder = Embedder(embedder_path(recorded["embedder"]))

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, query: str, k: int) -> list[Chunk]:
        """The `k` best chunks for `query`, best first, with their fused scores."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: list[str], k: int) -> list[list[Chunk]]:
        """`search` for each query, with one embedding pass over all of them."""
        fusion, n = self.settings.fusion, min(self.settings.candidates, len(self))
        lexical = self._bm25_rankings(queries, n) if fusion != "dense" else [[]] * len(queries)
        dense = self._dense_rankings(queries, n) if fusion != "bm25" else [[]] * len(queries)
        return [
            [
                Chunk(self._ids[row], self._sources[row], self._texts[row], score)
                for row, score in rrf([bm25, vec], self.settings.rrf_k)[:k]
            ]
            for bm25, vec in zip(lexical, dense, strict=True)
        ]

    def _bm25_rankings(self, queries: list[str], n: int) -> list[list[int]]:
        tokens = bm25_tokens(queries)
        rankings: list[list[int]] = [[] for _ in queries]
        asked = [i for i, t in enumerate(tokens) if t]  # only stop words: no lexical ranking
        if asked and n:
            rows, scores = self._bm25.retrieve([tokens[i] for i in asked], k=n, show_progress=False)
            for i, row, score in zip(asked, rows, scores, strict=True):
                rankings[i] = [int(r) for r, s in zip(row, score, strict=True) if s > 0]
        return rankings

    def _dense_rankings(self, queries: list[str], n: int) -> list[list[int]]:
        vectors = self._embedder.embed(queries)
        return [self._nearest(vector, n) for vector in vectors]

    def _nearest(self, vector: np.ndarray, n: int) -> list[int]:
        from lancedb.query import LanceVectorQueryBuilder

        query = self._table.search(vector)
        assert isinstance(query, LanceVectorQueryBuilder)  # a vector query's builder, for mypy
        found = query.distance_type("cosine").limit(n).select(["id", "_distance"])
        return [self._row_of[chunk] for chunk in found.to_arrow().column("id").to_pylist()]


def open_index(
    store: Store, index_id: str = "latest", settings: IndexSpec | None = None
) -> HybridRetriever:
    """The retriever over an index version ('latest': the newest); `settings` (the job's
    `index` section) sets fusion, rrf_k and candidates, else those it was built with."""
    return HybridRetriever(store, index_id, settings)


def show(store: Store, index_id: str = "latest") -> dict:
    """An index version's manifest."""
    return store.manifest(INDEXES, resolve_index_id(store, index_id))


def diff(store: Store, old: str, new: str) -> dict:
    """Chunks added, removed and unchanged (by id) and files added, removed and changed (by
    content hash) from index `old` to index `new`."""
    import lancedb

    def contents(index_id: str) -> tuple[set[str], dict[str, str]]:
        index_id = resolve_index_id(store, index_id)
        table = lancedb.connect(store.uri(INDEXES, index_id, "lance")).open_table(TABLE)
        files = store.manifest(INDEXES, index_id)["files"]
        return set(table.to_arrow().column("id").to_pylist()), {
            f["name"]: f["sha256"] for f in files
        }

    (old_chunks, old_files), (new_chunks, new_files) = contents(old), contents(new)
    return {
        "old": resolve_index_id(store, old),
        "new": resolve_index_id(store, new),
        "chunks": {
            "added": sorted(new_chunks - old_chunks),
            "removed": sorted(old_chunks - new_chunks),
            "unchanged": len(old_chunks & new_chunks),
        },
        "files": {
            "added": sorted(new_files.keys() - old_files.keys()),
            "removed": sorted(old_files.keys() - new_files.keys()),
            "changed": sorted(
                name
                for name in old_files.keys() & new_files.keys()
                if old_files[name] != new_files[name]
            ),
        },
    }
