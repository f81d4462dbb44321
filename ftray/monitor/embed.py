"""Sentence embeddings of prompts with the local all-MiniLM-L6-v2 (mean pooling, unit norm),
computed in a Ray Data actor, and the drift statistic built on them."""

from __future__ import annotations

import numpy as np

from ftray.evaluate.bertscore import MiniLM, with_minilm
from ftray.monitor.checks import psi


def embed(texts: list[str], *, num_cpus: float = 1, num_gpus: float = 0) -> np.ndarray:
    """[len(texts), 384] unit-norm embeddings, in input order (on a GPU when `num_gpus`)."""
    import ray.data

    rows = ray.data.from_items([{"index": i, "text": str(t)} for i, t in enumerate(texts)])
    done = with_minilm(rows, _Embed, num_cpus, num_gpus).to_pandas().sort_values("index")
    return np.stack(done["embedding"].to_numpy()) if len(done) else np.zeros((0, 384))


def input_drift(reference: np.ndarray, sample: np.ndarray) -> tuple[float, np.ndarray]:
    """PSI of the cosine similarity to the reference centroid, sample vs reference, and each
    sample's similarity (the least similar prompts are the examples an alert shows)."""
    centroid = reference.mean(axis=0)
    centroid /= np.linalg.norm(centroid) or 1.0
    ref_sim, sample_sim = reference @ centroid, sample @ centroid
    return psi(ref_sim, sample_sim), sample_sim


class _Embed(MiniLM):
    def __call__(self, batch):
        import torch

        encoded = self.encode(list(batch["text"]))
        with torch.no_grad():
            hidden = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        batch["embedding"] = list(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return batch
