"""Chunk and query embeddings: mean-pooled, unit-norm sentence vectors from the bundled MiniLM
or a sentence-transformers-style model folder. The same class embeds chunks in Ray Data
actors (`ftray index`) and queries in-process (the retriever), so both sides match."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftray.errors import UserError
from ftray.evaluate.bertscore import MiniLM, model_path
from ftray.spec.index import MINILM


def embedder_path(embedder: str) -> str:
    """The model folder `index.embedder` names; UserError when there is none."""
    if embedder == MINILM:
        return model_path()
    if not (Path(embedder) / "config.json").is_file():
        raise UserError(
            f"index.embedder: no Hugging Face model folder at {Path(embedder).resolve()} "
            "(looked for config.json). Use 'minilm', or a folder `save_pretrained` wrote."
        )
    return embedder


class Embedder(MiniLM):
    """Embeds texts; as a Ray Data actor it adds a `vector` column to each batch."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32 unit vectors, in input order."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = self.encode([str(t) for t in texts])
        with torch.no_grad():
            hidden = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def __call__(self, batch):
        batch["vector"] = list(self.embed(list(batch["text"])))
        return batch
