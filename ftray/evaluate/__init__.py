"""The evaluate stage: base model vs tuned adapter on the held-out split, with Ray Data."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass

from ftray.data.prepare import DatasetRef
from ftray.data.tokenize import render_prompt
from ftray.evaluate.metrics import exact_match
from ftray.models import generate_texts, load_model, load_tokenizer, resolve_model
from ftray.progress import Progress
from ftray.spec import EvalSpec, ModelSpec
from ftray.store import Store, content_id, download_dir
from ftray.train.ray_train import RunRef

EVAL_VERSION = 1


@dataclass(frozen=True)
class EvalRef:
    """A finished evaluation: metrics of the base model ('base') and the adapter ('tuned')."""

    eval_id: str
    metrics: dict
    reused: bool


def evaluate(
    spec: EvalSpec,
    model: ModelSpec,
    dataset: DatasetRef,
    run: RunRef,
    store: Store,
    progress: Progress,
) -> EvalRef:
    """Generate with and without the adapter on held-out examples and score both."""
    eval_id = content_id(
        "eval", run.run_id, dataset.dataset_id, spec.model_dump(mode="json"), EVAL_VERSION
    )
    if store.is_complete("evals", eval_id):
        return EvalRef(eval_id, store.manifest("evals", eval_id)["metrics"], True)

    import ray.data

    examples = ray.data.read_parquet(f"{dataset.uri}/eval").select_columns(
        ["source", "row", "prompt", "completion", "messages"]
    )
    examples = examples.limit(spec.max_examples)
    progress.note(f"generating for up to {spec.max_examples} held-out examples, base and tuned")
    scored = examples.map_batches(
        _Generate,
        fn_constructor_kwargs={
            "model_dir": resolve_model(model, store),
            "dtype": model.dtype,
            "adapter_uri": run.adapter_uri,
            "max_new_tokens": spec.max_new_tokens,
        },
        batch_size=spec.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=spec.num_workers),
        num_cpus=spec.cpus_per_worker,
    ).materialize()
    scored.write_parquet(store.uri("evals", eval_id, "outputs"))
    table = scored.to_pandas()

    metrics = {"examples": len(table)}
    for name in ("base", "tuned"):
        hits = exact_match(list(table[f"{name}_output"]), list(table["completion"]))
        metrics[name] = {
            "exact_match": round(sum(hits) / max(len(hits), 1), 4),
            "mean_output_tokens": round(float(table[f"{name}_tokens"].mean()), 2),
        }
    manifest = store.finish(
        {
            "eval_id": eval_id,
            "run_id": run.run_id,
            "dataset_id": dataset.dataset_id,
            "spec": spec.model_dump(mode="json"),
            "decoding": {"do_sample": False, "max_new_tokens": spec.max_new_tokens},
            "metrics": metrics,
        },
        "evals",
        eval_id,
    )
    return EvalRef(eval_id, manifest["metrics"], False)


class _Generate:
    """Per actor: the base model once, with the adapter on top; per batch: both answers."""

    def __init__(self, model_dir: str, dtype: str, adapter_uri: str, max_new_tokens: int):
        from peft import PeftModel

        self.tokenizer = load_tokenizer(model_dir)
        self._adapter_dir = _local_copy(adapter_uri)
        self.model = PeftModel.from_pretrained(load_model(model_dir, dtype), self._adapter_dir.name)
        self.model.eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch):
        prompts = [render_prompt(self.tokenizer, json.loads(m)) for m in batch["messages"]]
        with self.model.disable_adapter():
            base = generate_texts(self.model, self.tokenizer, prompts, self.max_new_tokens)
        tuned = generate_texts(self.model, self.tokenizer, prompts, self.max_new_tokens)
        for name, results in (("base", base), ("tuned", tuned)):
            batch[f"{name}_output"] = [r["text"] for r in results]
            batch[f"{name}_tokens"] = [r["tokens"] for r in results]
        return batch


def _local_copy(uri: str) -> tempfile.TemporaryDirectory:
    """The adapter folder copied to local disk (kept until the returned object is dropped)."""
    local = tempfile.TemporaryDirectory(prefix="ftray-adapter-")
    download_dir(uri, local.name)
    return local
