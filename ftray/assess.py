"""The assess stage: decide whether fine-tuning is worth its GPUs, before spending them.

Three questions, answered into one artifact (`assessments/<id>/manifest.json`):

1. Is there enough data? Below `assess.min_examples` usable training examples: refuse;
   below `assess.warn_examples`: warn.
2. Does the base model already do the job? It answers the held-out examples, with the job's
   system prompt and optionally a few solved examples first; at or above `assess.target`
   exact match, the verdict is "don't fine-tune": prompting is enough.
3. What would each method cost? Memory per GPU, hours and dollars for full, LoRA and QLoRA
   on the configured GPUs (`ftray.estimate`), and the recommended method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ftray.data.prepare import DatasetRef
from ftray.estimate import METHODS, estimate, model_shape, recommend
from ftray.evaluate.generate import generate
from ftray.evaluate.metrics import exact_match
from ftray.models import resolve_model
from ftray.progress import Progress
from ftray.spec import JobSpec
from ftray.store import Store, content_id

ASSESS_VERSION = 1
FINE_TUNE, DONT, TOO_LITTLE = "fine-tune", "don't fine-tune", "not enough data"


@dataclass(frozen=True)
class AssessRef:
    assess_id: str
    manifest: dict
    reused: bool

    @property
    def decision(self) -> str:
        return self.manifest["decision"]


def assess(spec: JobSpec, dataset: DatasetRef, store: Store, progress: Progress) -> AssessRef:
    """Score the base model, count the data, estimate each method; write the verdict."""
    settings = spec.assess
    generation = {"max_new_tokens": spec.eval.max_new_tokens}
    assess_id = content_id(
        "assess",
        dataset.dataset_id,
        spec.model.model_dump(mode="json"),
        settings.model_dump(mode="json"),
        spec.train.model_dump(mode="json"),
        generation,
        ASSESS_VERSION,
    )
    if store.is_complete("assessments", assess_id):
        return AssessRef(assess_id, store.manifest("assessments", assess_id), True)

    usable = dataset.manifest["counts"]["train"]
    reasons = []
    if usable < settings.warn_examples:
        reasons.append(
            f"only {usable} usable training examples (warn below {settings.warn_examples}): "
            "a few hundred or more good examples usually make the difference"
        )
    baseline = None
    if usable >= settings.min_examples:
        baseline = _baseline(spec, dataset, store, progress)
    decision = decide(usable, baseline, spec)
    if decision == TOO_LITTLE:
        reasons.insert(
            0,
            f"{usable} usable training examples, fewer than assess.min_examples "
            f"{settings.min_examples}: add data (see the dataset's quarantine for what was "
            "rejected) or lower assess.min_examples",
        )
    elif decision == DONT:
        reasons.insert(
            0,
            f"the base model already scores {baseline['exact_match']:.1%} exact match, at or "
            f"above assess.target {settings.target:.0%}: ship the prompt, not a fine-tune",
        )
    else:
        score = "not measured" if baseline is None else f"{baseline['exact_match']:.1%}"
        reasons.insert(0, f"the base model scores {score}, below the {settings.target:.0%} target")
    estimates = _estimates(spec, dataset, store)
    manifest = store.finish(
        {
            "assess_id": assess_id,
            "dataset_id": dataset.dataset_id,
            "decision": decision,
            "reasons": reasons,
            "usable_examples": usable,
            "baseline": baseline,
            "estimates": [e.as_dict() for e in estimates],
            "recommended_method": recommend(estimates),
            "settings": settings.model_dump(mode="json"),
        },
        "assessments",
        assess_id,
    )
    return AssessRef(assess_id, manifest, False)


def decide(usable: int, baseline: dict | None, spec: JobSpec) -> str:
    """The verdict from the data count and the base model's score."""
    if usable < spec.assess.min_examples:
        return TOO_LITTLE
    if baseline is not None and baseline["exact_match"] >= spec.assess.target:
        return DONT
    return FINE_TUNE


def _baseline(spec: JobSpec, dataset: DatasetRef, store: Store, progress: Progress) -> dict:
    import ray.data

    columns = ["source", "row", "prompt", "completion", "messages"]
    examples = ray.data.read_parquet(f"{dataset.uri}/eval").select_columns(columns)
    examples = examples.limit(spec.assess.max_examples)
    shots = _few_shot(dataset, spec.assess.few_shot)
    progress.note(
        f"scoring the base model on up to {spec.assess.max_examples} held-out examples"
        + (f" with {spec.assess.few_shot} solved examples first" if shots else "")
    )
    model_dir = resolve_model(spec.model, store)
    table = generate(
        examples,
        {"base": {"kind": "base"}},
        model_dir=model_dir,
        dtype=spec.model.dtype,
        max_new_tokens=spec.eval.max_new_tokens,
        batch_size=spec.eval.batch_size,
        num_workers=spec.eval.num_workers,
        cpus_per_worker=spec.eval.cpus_per_worker,
        few_shot=shots,
    ).to_pandas()
    hits = exact_match(list(table["base_output"]), list(table["completion"]))
    return {
        "examples": len(hits),
        "exact_match": round(sum(hits) / max(len(hits), 1), 4),
        "few_shot": spec.assess.few_shot,
        "samples": table[["prompt", "completion", "base_output"]].head(5).to_dict("records"),
    }


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
    distinct, rest, seen = [], [], set()
    for row in rows:
        (rest if row["completion"] in seen else distinct).append(row)
        seen.add(row["completion"])
    shots = []
    for row in (distinct + rest)[:count]:
        user = [m for m in json.loads(row["messages"]) if m["role"] != "system"]
        shots += [*user, {"role": "assistant", "content": row["completion"]}]
    return shots


def _estimates(spec: JobSpec, dataset: DatasetRef, store: Store) -> list:
    shape = model_shape(resolve_model(spec.model, store))
    tokens = dataset.manifest.get("tokens") or {}
    per_epoch = tokens.get("total", 0)
    steps = spec.train.max_steps
    total = per_epoch * spec.train.epochs
    if steps:
        total = min(total, steps * spec.train.batch_size * tokens.get("mean", 0))
    micro = (spec.train.batch_size // spec.train.scaling.num_workers) * tokens.get(
        "p95", spec.data.max_seq_len
    )
    return [
        estimate(
            shape,
            method,
            tokens=int(total),
            micro_batch_tokens=max(micro, 1),
            gpu=spec.assess.gpu,
            num_gpus=spec.assess.num_gpus,
            lora_r=spec.train.lora.r,
        )
        for method in METHODS
    ]
