"""The evaluate stage: the candidate vs the incumbent on held-out examples, with Ray Data.

Contract. In: a `DatasetRef` (its eval split), the candidate's `RunRef`, the incumbent
(`eval.incumbent`: a registry model, or the base model) and the job's eval section. Out: an
`EvalRef` to `evals/<eval-id>/`: per-example `outputs/`, `report.md`, `report.html` and the
manifest (metrics, comparison, the gate's verdict). Side effects: none on the registry (the
pipeline applies the verdict); a changed gate rewrites a stored evaluation's verdict and
reports (`regate`).

Both arms answer the same examples (greedy, recorded decoding settings); each answer is
scored per example, the arms are compared with paired bootstrap intervals (and McNemar's
test for right/wrong answers), the spec's gate gives its verdict, and `report.md` /
`report.html` show it all.

Evaluation judges what serving will serve: the base loads with the job's serving
configuration (`serving`: `serve.quantization`'s bitsandbytes settings and the dtype, from
`ftray.placement.serving_config`), which the manifest records for the model card.

Beside the task, a forgetting probe: every model's perplexity on a general-text sample shipped
with ftray (`general/general.txt`), the candidate's as a ratio to the base model's.

The evaluation's id leaves the gate out: changing only `eval.gate` re-applies the new rules
to the stored comparison (no generation) and rewrites the verdict and the reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftray.artifacts import DatasetRef, EvalRef, RunRef, reuse
from ftray.errors import UserError
from ftray.evaluate.gate import apply_to_stored
from ftray.evaluate.generate import generate, generation_options
from ftray.evaluate.rag_metrics import asked_with_context, retrieval_arms
from ftray.evaluate.score import ARMS, Task, judge
from ftray.models import resolve_model
from ftray.progress import Progress
from ftray.registry import get_model, production
from ftray.spec import DataSpec, EvalSpec, ModelSpec
from ftray.store import Store, content_id, utc_stamp

EVAL_VERSION = 4
GENERAL_TEXT = Path(__file__).with_name("general") / "general.txt"


def evaluate(
    spec: EvalSpec,
    model: ModelSpec,
    data: DataSpec,
    dataset: DatasetRef,
    run: RunRef,
    store: Store,
    progress: Progress,
    serving: dict,
) -> EvalRef:
    """Generate with the candidate and the incumbent, score, compare, apply the gate; the
    base model loads as `serving` (`ftray.placement.serving_config`) says."""
    task = Task.of(spec, data)
    eval_id = content_id(
        "eval",
        run.id,
        dataset.id,
        spec.model_dump(mode="json", exclude={"gate"}),
        [task.name, task.labels, task.schema],
        [serving, model.attention],
        EVAL_VERSION,
    )
    if reuse(store, "evals", eval_id) is not None:
        return regate(store, eval_id, spec)

    import pyarrow as pa
    import ray.data

    incumbent, incumbent_arm = _incumbent(spec.incumbent, model, run, store)
    progress.note(f"candidate {run.id} vs incumbent {incumbent['label']}")
    # a dataset prepared with data.retrieval: both arms are asked with each example's
    # retrieved chunks (what a model served with retrieval sees); the candidate once more
    # without
    retrieval = dataset.manifest.get("retrieval")
    examples = _examples(dataset, spec.max_examples, bool(retrieval))
    options: dict[str, Any] = {
        "model_dir": resolve_model(model, store),
        **generation_options(spec, model, serving),
    }
    arms = {"candidate": {"kind": run.kind, "uri": run.weights_uri}, "incumbent": incumbent_arm}
    progress.note(f"generating for {len(examples)} held-out examples with both arms")
    answered = generate(
        ray.data.from_pandas(examples),
        arms,
        **options,
        probe_text=GENERAL_TEXT.read_text(encoding="utf-8"),
    )
    if "bertscore" in task.groups:
        from ftray.evaluate.bertscore import add_bertscore

        answered = add_bertscore(
            answered, list(ARMS), num_cpus=spec.cpus_per_worker, num_gpus=spec.gpus_per_worker
        )
    sampled = None
    if "consistency" in task.groups:
        progress.note(
            f"sampling {spec.consistency_samples} answers for {spec.consistency_examples} "
            "examples per arm (consistency)"
        )
        sampled = generate(
            ray.data.from_pandas(examples.head(spec.consistency_examples)),
            arms,
            **options,
            temperature=spec.consistency_temperature,
            samples=spec.consistency_samples,
            seed=spec.seed,
        ).to_pandas()
    if retrieval:
        progress.note("generating with the candidate again, without retrieved context")
        plain = generate(
            ray.data.from_pandas(examples.assign(messages=examples["plain_messages"])),
            {"candidate": arms["candidate"]},
            **options,
        )
        if "bertscore" in task.groups:
            from ftray.evaluate.bertscore import add_bertscore

            plain = add_bertscore(
                plain, ["candidate"], num_cpus=spec.cpus_per_worker, num_gpus=spec.gpus_per_worker
            )
        retrieval = retrieval_arms(answered.to_pandas(), plain.to_pandas(), task, retrieval)
    table, results = judge(answered.to_pandas(), sampled, task, spec)
    manifest = {
        "eval_id": eval_id,
        "run_id": run.id,
        "dataset_id": dataset.id,
        "spec": spec.model_dump(mode="json"),
        "incumbent": incumbent,
        "serving": serving,  # what the gate approves along with the weights
        # what the report needs to be rendered again later (with human review results)
        "task": dict(task.__dict__),
        "decoding": {
            "do_sample": False,
            "max_new_tokens": spec.max_new_tokens,
            "batch_size": options["batch_size"],
            "dtype": model.dtype,
            "consistency": {
                "temperature": spec.consistency_temperature,
                "samples": spec.consistency_samples,
                "examples": spec.consistency_examples,
                "seed": spec.seed,
            },
        },
        **results,
        **({"retrieval": retrieval} if retrieval else {}),
    }
    outputs = pa.Table.from_pandas(table, preserve_index=False)
    store.write_parquet(outputs, "evals", eval_id, "outputs", "part-0.parquet")
    from ftray.evaluate.report import write_report

    write_report(manifest, table, task, store, eval_id, worst=spec.worst_examples)
    manifest = store.finish(manifest, "evals", eval_id)
    return EvalRef(eval_id, store.uri("evals", eval_id), manifest, False)


def regate(store: Store, eval_id: str, spec: EvalSpec) -> EvalRef:
    """A stored evaluation with `spec.gate` applied to its comparison: when the gate differs
    from the one it was judged by, the manifest's gate and both reports are rewritten."""
    from ftray.evaluate.report import rewrite_report

    manifest = store.manifest("evals", eval_id)
    gate_spec = spec.gate.model_dump(mode="json")
    if manifest["spec"]["gate"] == gate_spec:
        return EvalRef(eval_id, store.uri("evals", eval_id), manifest, True)
    gate = apply_to_stored(spec.gate, manifest)
    manifest = {
        **manifest,
        "spec": {**manifest["spec"], "gate": gate_spec},
        "gate": gate,
        "regated_at": utc_stamp(),
    }
    store.finish(manifest, "evals", eval_id)
    rewrite_report(store, eval_id)
    return EvalRef(eval_id, store.uri("evals", eval_id), manifest, True, regated=True)


def _examples(dataset: DatasetRef, limit: int, retrieval: bool = False):
    """The first `limit` held-out examples in a fixed order (source, row); with `retrieval`,
    `messages` holds each question with its chunks (`plain_messages` the question alone)."""
    import pyarrow.parquet as pq

    columns = ["source", "row", "prompt", "completion", "messages"]
    table = pq.read_table(
        f"{dataset.uri}/eval", columns=[*columns, *(["context"] if retrieval else [])]
    ).to_pandas()
    table = table.sort_values(["source", "row"]).head(limit).reset_index(drop=True)
    if retrieval:
        table["plain_messages"] = table["messages"]
        table["messages"] = [
            asked_with_context(m, c)
            for m, c in zip(table["messages"], table["context"], strict=True)
        ]
    return table


def _incumbent(setting: str, model: ModelSpec, run: RunRef, store: Store) -> tuple[dict, dict]:
    """(what the manifest records, the generation arm) for eval.incumbent."""
    model_id = setting if setting.startswith("model-") else None
    if setting in ("auto", "production"):
        model_id = production(store)
        if model_id is None and setting == "production":
            raise UserError(
                "eval.incumbent is 'production' but no model has been promoted yet in "
                f"{store.uri('models')}; use 'base' (or 'auto') for the first model."
            )
    card = get_model(store, model_id) if model_id else None
    if card is not None and card["run_id"] == run.id:
        card = None  # the candidate is production already: compare with the base model
    if card is None:
        base = {"kind": "base", "model_id": None, "label": f"base model {model.base}"}
        return base, {"kind": "base"}
    if card["base_model"] != model.base:
        raise UserError(
            f"incumbent {card['model_id']} was tuned from {card['base_model']!r}, not "
            f"model.base {model.base!r}; set eval.incumbent to 'base' or to a model id "
            "trained from the same base."
        )
    kind = card["kind"]
    record = {"kind": kind, "model_id": card["model_id"], "label": card["model_id"]}
    return record, {"kind": kind, "uri": card[f"{kind}_uri"]}
