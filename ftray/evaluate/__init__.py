"""The evaluate stage: base model vs tuned adapter on the held-out split, with Ray Data."""

from __future__ import annotations

from dataclasses import dataclass

from ftray.data.prepare import DatasetRef
from ftray.evaluate.generate import generate
from ftray.evaluate.metrics import exact_match
from ftray.models import resolve_model
from ftray.progress import Progress
from ftray.spec import EvalSpec, ModelSpec
from ftray.store import Store, content_id
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
    scored = generate(
        examples,
        spec,
        resolve_model(model, store),
        model.dtype,
        adapter_uri=run.adapter_uri,
        tuned_model_uri=run.weights_uri if run.kind == "model" else None,
    )
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
