"""The assess stage: decide whether fine-tuning is worth its GPUs, before spending them.

Contract. In: a `DatasetRef` (its counts, training examples for the few-shot prompt, held-out
examples) and the job's model, train, eval and assess sections. Out: an `AssessRef` to
`assessments/<assess-id>/manifest.json` (decision, baseline, cost estimates, serving costs).
Side effects: none beyond that folder (the base model answers on Ray Data, nothing is kept).

Three questions, answered into one artifact (`assessments/<id>/manifest.json`):

1. Is there enough data? Below `assess.min_examples` usable training examples: refuse;
   below `assess.warn_examples`: warn.
2. Does the base model already do the job? It answers the held-out examples, with the job's
   system prompt and `assess.few_shot` solved examples first (the prompt a user would
   write), scored by the evaluation's own scorers on the task's primary metric (macro-F1,
   field micro-F1, ROUGE-L, or `eval.primary_metric`); at or above `assess.target`, the
   verdict is "don't fine-tune": prompting is enough.
3. What would each method cost? Memory per GPU, hours and dollars for full, LoRA and QLoRA
   on the configured GPUs (`ftray.estimate`), and the recommended method; and what each
   answer costs to serve: the prompted base model's few-shot prompt against the tuned
   model's zero-shot one (tokens, latency, dollars per million requests).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np

from ftray.artifacts import DONT, FINE_TUNE, TOO_LITTLE, AssessRef, DatasetRef, reuse
from ftray.data.tokenize import render_prompt
from ftray.errors import UserError
from ftray.estimate import (
    METHODS,
    estimate,
    gpu_price,
    model_shape,
    recommend,
    serving_cost,
    significant,
    usd,
)
from ftray.evaluate.generate import generate, generation_options
from ftray.evaluate.rag_metrics import asked_with_context, chunks, groundedness
from ftray.evaluate.score import Task, score_one
from ftray.models import load_tokenizer, resolve_model
from ftray.placement import serving_config
from ftray.progress import Progress
from ftray.rag.context import last_question, with_context
from ftray.spec import METRIC_GROUPS, JobSpec
from ftray.store import Store, content_id

ASSESS_VERSION = 2


def assess(spec: JobSpec, dataset: DatasetRef, store: Store, progress: Progress) -> AssessRef:
    """Score the base model, count the data, estimate each method; write the verdict."""
    settings = spec.assess
    generation = {"max_new_tokens": spec.eval.max_new_tokens, "serving": serving_config(spec)}
    index_id = _index_to_try(spec, dataset, store)
    assess_id = content_id(
        "assess",
        dataset.id,
        index_id,
        spec.model.model_dump(mode="json"),
        settings.model_dump(mode="json"),
        spec.train.model_dump(mode="json"),
        generation,
        _task(spec).__dict__,
        ASSESS_VERSION,
    )
    uri = store.uri("assessments", assess_id)
    if (manifest := reuse(store, "assessments", assess_id)) is not None:
        return AssessRef(assess_id, uri, manifest, True)

    usable = dataset.manifest["counts"]["train"]
    reasons = []
    if usable < settings.warn_examples:
        reasons.append(
            f"only {usable} usable training examples (warn below {settings.warn_examples}): "
            "a few hundred or more good examples usually make the difference"
        )
    baseline = requests = None
    if usable >= settings.min_examples:
        baseline = _baseline(spec, dataset, store, progress, index_id)
        requests = baseline.pop("requests")
    decision = decide(usable, baseline, spec)
    if decision == TOO_LITTLE:
        reasons.insert(
            0,
            f"{usable} usable training examples, fewer than assess.min_examples "
            f"{settings.min_examples}: add data (see the dataset's quarantine for what was "
            "rejected) or lower assess.min_examples",
        )
    elif decision == DONT and _meets_target(baseline, spec) == "plain":
        assert baseline is not None  # `decide` says DONT only on a measured baseline
        reasons.insert(
            0,
            f"the prompted base model already scores {baseline['metric']} "
            f"{baseline['score']:.3f}, at or above assess.target {settings.target:g}: ship the "
            "prompt, not a fine-tune",
        )
    elif decision == DONT:
        assert baseline is not None and baseline["retrieval"]
        rag = baseline["retrieval"]
        reasons.insert(
            0,
            f"with {rag['k']} retrieved chunks (index {rag['index_id']}) the prompted base "
            f"model already scores {rag['metric']} {rag['score']:.3f}, at or above assess.target "
            f"{settings.target:g}: ship the prompt with retrieval (serve.retrieval.base_k: "
            f"{rag['k']}), not a fine-tune",
        )
    else:
        score = (baseline or {}).get("score")
        shown = "not measured" if score is None else f"{score:.3f}"
        metric = baseline["metric"] if baseline else _task(spec).primary
        reasons.insert(
            0,
            f"the prompted base model scores {metric} {shown}, below assess.target "
            f"{settings.target:g}",
        )
    rag = (baseline or {}).get("retrieval")
    if rag and rag["score"] is not None:
        beats = "at or above" if rag["score"] >= settings.target else "below"
        reasons.append(
            f"with retrieved context (index {rag['index_id']}) the prompted base model scores "
            f"{rag['metric']} {rag['score']:.3f}, {beats} assess.target {settings.target:g}"
        )
    shape = _shape(spec, store)
    estimates = _estimates(spec, dataset, shape)
    manifest = store.finish(
        {
            "assess_id": assess_id,
            "dataset_id": dataset.id,
            "decision": decision,
            "reasons": reasons,
            "usable_examples": usable,
            "baseline": baseline,
            "estimates": [e.as_dict() for e in estimates],
            "recommended_method": recommend(estimates),
            "serving": _serving(spec, requests, shape) if requests else None,
            "settings": settings.model_dump(mode="json"),
        },
        "assessments",
        assess_id,
    )
    return AssessRef(assess_id, uri, manifest, False)


def decide(usable: int, baseline: dict | None, spec: JobSpec) -> str:
    """The verdict from the data count and the base model's score."""
    if usable < spec.assess.min_examples:
        return TOO_LITTLE
    return DONT if _meets_target(baseline, spec) else FINE_TUNE


def _meets_target(baseline: dict | None, spec: JobSpec) -> str | None:
    """Which prompted base arm reaches assess.target: 'plain', 'retrieval' (the base model
    asked with retrieved context) or None."""
    rag = (baseline or {}).get("retrieval") or {}
    for arm, score in (("plain", (baseline or {}).get("score")), ("retrieval", rag.get("score"))):
        if score is not None and score >= spec.assess.target:
            return arm
    return None


def _index_to_try(spec: JobSpec, dataset: DatasetRef, store: Store) -> str | None:
    """The index the base + retrieval arm searches itself: the newest one of a job with an
    `index:` section whose dataset was prepared without data.retrieval (with it, the
    dataset's own chunks are used); None when there is none."""
    if spec.index is None or dataset.manifest.get("retrieval") or not spec.assess.retrieval_k:
        return None
    from ftray.rag.index import INDEXES

    finished = store.manifests(INDEXES)
    return finished[-1]["index_id"] if finished else None


def _baseline(
    spec: JobSpec, dataset: DatasetRef, store: Store, progress: Progress, index_id: str | None
) -> dict:
    import ray.data

    columns = ["source", "row", "prompt", "completion", "messages"]
    # a dataset prepared with data.retrieval carries each held-out example's chunks
    retrieval = dataset.manifest.get("retrieval")
    columns += ["context"] if retrieval else []
    examples = ray.data.read_parquet(f"{dataset.uri}/eval").select_columns(columns)
    examples = examples.limit(spec.assess.max_examples)
    if index_id is not None:  # the job's index, searched here for the base + retrieval arm
        examples, retrieval = _retrieved(examples, spec, store, index_id)
    shots = _few_shot(dataset, spec.assess.few_shot)
    task = _task(spec)
    progress.note(
        f"scoring the prompted base model on {task.primary}, on up to "
        f"{spec.assess.max_examples} held-out examples"
        + (f" with {spec.assess.few_shot} solved examples first" if shots else "")
    )
    model_dir = resolve_model(spec.model, store)
    answered = generate(
        examples,
        {"base": {"kind": "base"}},
        model_dir=model_dir,
        # the base model as it would be served (and as evaluation will judge it)
        **generation_options(spec.eval, spec.model, serving_config(spec)),
        few_shot=shots,
    )
    if task.primary == "bertscore_f1":
        from ftray.evaluate.bertscore import add_bertscore

        answered = add_bertscore(
            answered,
            ["base"],
            num_cpus=spec.eval.cpus_per_worker,
            num_gpus=spec.eval.gpus_per_worker,
        )
    table = answered.to_pandas()
    # The tuned model is asked without examples (with its chunks, when it is trained with
    # retrieval) and answers like the references.
    tokenizer = load_tokenizer(model_dir, spec.model.chat_template)
    contexts = table["context"] if retrieval and index_id is None else ["[]"] * len(table)
    tuned_prompt = [
        len(tokenizer(render_prompt(tokenizer, chat), add_special_tokens=False).input_ids)
        for m, context in zip(table["messages"], contexts, strict=True)
        for chat in [with_context(json.loads(m), chunks(context))]
    ]
    tuned_output = [  # + 1: the end-of-turn token that closes an answer
        min(len(tokenizer(c, add_special_tokens=False).input_ids) + 1, spec.eval.max_new_tokens)
        for c in table["completion"]
    ]
    scores = score_base(table, task)
    with_retrieval = None
    if retrieval:
        progress.note(
            f"scoring the prompted base model again with retrieved context (k={retrieval['k']})"
        )
        with_retrieval = _with_retrieval(examples, shots, task, spec, model_dir)
        with_retrieval.update(index_id=retrieval["index_id"], k=retrieval["k"])
    return {
        "examples": len(table),
        "metric": task.primary,
        "score": scores[task.primary],
        "scores": scores,
        "few_shot": spec.assess.few_shot,
        "requests": {
            "prompted_base": {
                "prompt_tokens": round(float(np.mean(table["base_prompt_tokens"])), 1),
                "output_tokens": round(float(np.mean(table["base_tokens"])), 1),
                "latency_s": significant(float(np.mean(table["base_latency_s"])), 3),
            },
            "tuned": {
                "prompt_tokens": round(float(np.mean(tuned_prompt)), 1),
                "output_tokens": round(float(np.mean(tuned_output)), 1),
            },
        },
        "samples": table[["prompt", "completion", "base_output"]].head(5).to_dict("records"),
        "retrieval": with_retrieval,
    }


def _with_retrieval(examples, shots: list[dict], task: Task, spec: JobSpec, model_dir: str) -> dict:
    """The prompted base model + retrieval: the same held-out examples and shots, each with
    the chunks prepare retrieved for it (plain top-k, what serving would retrieve), put in by
    `with_context`. Its task metric, prompt tokens, latency and groundedness per request."""
    answered = generate(
        examples.map_batches(_put_context, batch_format="pandas"),
        {"base": {"kind": "base"}},
        model_dir=model_dir,
        **generation_options(spec.eval, spec.model, serving_config(spec)),
        few_shot=shots,
    )
    table = answered.to_pandas()
    shown = [chunks(context) for context in table["context"]]
    grounded = [groundedness(o, c) for o, c in zip(table["base_output"], shown, strict=True)]
    judged = [g for g in grounded if g is not None]
    scores = score_base(table, task)
    return {
        "examples": len(table),
        "metric": task.primary,
        "score": scores[task.primary],
        "scores": scores,
        "prompt_tokens": round(float(np.mean(table["base_prompt_tokens"])), 1),
        "output_tokens": round(float(np.mean(table["base_tokens"])), 1),
        "latency_s": significant(float(np.mean(table["base_latency_s"])), 3),
        "groundedness": round(float(np.mean(judged)), 4) if judged else None,
    }


def _retrieved(examples, spec: JobSpec, store: Store, index_id: str):
    """The held-out examples with the `k` chunks the index returns for each question (the
    `context` column, as prepare writes it), searched on the driver: assess reads at most
    `assess.max_examples` examples."""
    import ray.data

    from ftray.rag.index import open_index

    table = examples.to_pandas()
    k = spec.assess.retrieval_k
    retriever = open_index(store, index_id, spec.index)
    questions = [last_question(json.loads(messages)) for messages in table["messages"]]
    found = retriever.search_many(questions, k)
    table["context"] = [json.dumps([asdict(c) for c in shown]) for shown in found]
    return ray.data.from_pandas(table), {"index_id": index_id, "k": k}


def _put_context(batch):
    """Each example's messages with its chunks (the `context` column) before the question."""
    batch["messages"] = [
        asked_with_context(m, context)
        for m, context in zip(batch["messages"], batch["context"], strict=True)
    ]
    return batch


def _task(spec: JobSpec) -> Task:
    """The task the evaluation will score, as `ftray.evaluate` resolves it; one whose primary
    metric assess cannot compute is refused before any model runs."""
    task = Task.of(spec.eval, spec.data)
    if task.primary in METRIC_GROUPS["consistency"]:
        raise UserError(
            f"assess scores the prompted base model on the primary metric, and {task.primary!r} "
            "needs sampled answers; set eval.primary_metric to a metric computed from the "
            "greedy answers (e.g. exact_match, rouge_l)."
        )
    return task


def score_base(table, task: Task) -> dict[str, float | None]:
    """The base model's answers (`base_output`, `base_confidence`) scored by the
    evaluation's own scorers: the primary metric, exact match and, for JSON, the parse rate."""
    wanted = [task.primary, "exact_match"] + (["parse_rate"] if task.name == "json" else [])
    found = score_one(table, task, wanted).items()
    return {name: None if value is None else round(float(value), 4) for name, value in found}


def _few_shot(dataset: DatasetRef, count: int) -> list[dict]:
    """User/assistant turns from training examples, distinct answers first."""
    if not count:
        return []
    import ray.data

    rows = (
        ray.data.read_parquet(f"{dataset.uri}/train")
        .select_columns(["prompt", "completion", "messages"])
        .take(max(count * 20, 200))
    )
    distinct: list[dict] = []
    rest: list[dict] = []
    seen: set[str] = set()
    for row in rows:
        (rest if row["completion"] in seen else distinct).append(row)
        seen.add(row["completion"])
    shots = []
    for row in (distinct + rest)[:count]:
        user = [m for m in json.loads(row["messages"]) if m["role"] != "system"]
        shots += [*user, {"role": "assistant", "content": row["completion"]}]
    return shots


def memory_estimates(spec: JobSpec, store: Store) -> list[str]:
    """`ftray assess --estimates-only`: each method's memory per GPU on assess.num_gpus ×
    assess.gpu, as lines for the terminal. Reads the model's config only (assess.base_config,
    else the base model's): no Ray, no data, no weights. Micro-batches are taken as full
    (micro-batch × data.max_seq_len tokens): an upper bound, as with packing."""
    shape = _shape(spec, store)
    micro = _micro_batch(spec)
    where = f"{spec.assess.num_gpus} × {spec.assess.gpu}"
    lines = [
        f"{spec.model.base}: {shape.params / 1e9:.2f} B parameters; micro-batch {micro} × "
        f"{spec.data.max_seq_len} tokens per GPU, gradient checkpointing assumed"
    ]
    for method in METHODS:
        row = estimate(
            shape,
            method,
            tokens=0,
            micro_batch_tokens=micro * spec.data.max_seq_len,
            gpu=spec.assess.gpu,
            num_gpus=spec.assess.num_gpus,
            lora_r=spec.train.lora.r,
            sharding=spec.train.sharding,
        )
        chosen = "  ← train.method" if method == spec.train.base_method else ""
        fits = "fits" if row.fits else "does not fit"
        lines.append(f"  {method:<5} {row.memory_gib:>7.1f} GiB/GPU  {fits} on {where}{chosen}")
    if not spec.train.gradient_checkpointing:
        lines.append("  train.gradient_checkpointing is off: activations need several times more")
    return lines


def _shape(spec: JobSpec, store: Store):
    """The base model's shape, from assess.base_config when set (no model needed)."""
    return model_shape(spec.assess.base_config or resolve_model(spec.model, store))


def _micro_batch(spec: JobSpec) -> int:
    """Examples per GPU per forward pass: what activations are sized by."""
    train = spec.train
    return train.micro_batch_size or train.batch_size // train.scaling.num_workers


def _estimates(spec: JobSpec, dataset: DatasetRef, shape) -> list:
    tokens = dataset.manifest.get("tokens") or {}
    total = tokens.get("total", 0) * spec.train.epochs
    if spec.train.max_steps:
        total = min(total, spec.train.max_steps * spec.train.batch_size * tokens.get("mean", 0))
    micro = _micro_batch(spec) * tokens.get("p95", spec.data.max_seq_len)
    return [
        estimate(
            shape,
            method,
            tokens=int(total),
            micro_batch_tokens=max(micro, 1),
            gpu=spec.assess.gpu,
            num_gpus=spec.assess.num_gpus,
            lora_r=spec.train.lora.r,
            sharding=spec.train.sharding,
            prices=spec.assess.gpu_prices,
        )
        for method in METHODS
    ]


def _serving(spec: JobSpec, requests: dict, shape) -> dict:
    """Per request, the prompted base model (few-shot prompt, measured) against the tuned
    model (zero-shot prompt, reference-length answers): tokens, latency, cost."""
    gpu = spec.assess.gpu
    price = gpu_price(gpu, spec.assess.gpu_prices)
    base, tuned = requests["prompted_base"], requests["tuned"]
    rows = {}
    for name, row in (("prompted_base", base), ("tuned", tuned)):
        tokens = row["prompt_tokens"] + row["output_tokens"]
        rows[name] = {
            **row,
            "cost_per_million_usd": significant(serving_cost(shape, tokens, gpu, price)),
        }
    # No tuned model yet: its latency scales the base model's measured time per token.
    per_token = base["latency_s"] / max(base["prompt_tokens"] + base["output_tokens"], 1)
    rows["tuned"]["latency_s"] = significant(
        per_token * (tuned["prompt_tokens"] + tuned["output_tokens"]), 3
    )
    rows["prompted_base"]["latency"], rows["tuned"]["latency"] = "measured", "estimated"
    return {
        "gpu": gpu,
        "usd_per_gpu_hour": price,
        **rows,
        "notes": [
            "latency measured here (batches of eval.batch_size) for the prompted base model; "
            "for the tuned model estimated as the base model's seconds per token × its tokens",
            "cost per 1M requests: 2 FLOPs per parameter per token at 40% of the GPU's peak, "
            "a batched server's lower bound, at usd_per_gpu_hour (assess.gpu_prices)",
        ],
    }


def summary(manifest: dict, spec: JobSpec) -> list[str]:
    """The assessment in lines for the terminal: verdict, reasons, estimates, serving."""
    lines = [f"verdict: {manifest['decision']}"]
    lines += [f"  - {reason}" for reason in manifest["reasons"]]
    where = f"on {spec.assess.num_gpus} × {spec.assess.gpu}"
    for row in manifest["estimates"]:
        lines.append(
            f"  {row['method']:<5} {row['memory_gib_per_gpu']:>7.1f} GiB/GPU "
            f"{'fits' if row['fits'] else 'does not fit':<12} {row['hours']:.3g} h  "
            f"{usd(row['cost_usd'])}  {where}"
        )
    lines.append(f"recommended method: {manifest['recommended_method']}")
    serving = manifest.get("serving")
    if serving:
        lines.append(
            f"serving per request on {serving['gpu']} at "
            f"{usd(serving['usd_per_gpu_hour'])}/GPU-hour:"
        )
        for name, title in (
            ("prompted_base", "prompted base (few-shot)"),
            ("tuned", "tuned (zero-shot)"),
        ):
            row = serving[name]
            lines.append(
                f"  {title:<25} {row['prompt_tokens']:>7.1f} prompt + {row['output_tokens']:.1f} "
                f"answer tokens, {row['latency_s'] * 1000:.3g} ms "
                f"({row['latency']}), "
                f"{usd(row['cost_per_million_usd'])} per 1M requests"
            )
    rag = (manifest.get("baseline") or {}).get("retrieval")
    if rag:
        lines.append(
            f"prompted base + retrieval: {rag['metric']} {rag['score']}, "
            f"{rag['prompt_tokens']:.1f} prompt + {rag['output_tokens']:.1f} answer tokens, "
            f"{rag['latency_s'] * 1000:.3g} ms (measured), groundedness {rag['groundedness']}"
        )
    return lines
