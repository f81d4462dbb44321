"""`ftray retrain`: the next dataset version = the job's sources + accepted corrections,
through the same prepare rules, then train, evaluate against production, and the gate.

The corrections become one more source file, `monitor/corrections/<hash>.jsonl`, named by
its content, with a precedence above every other source (a correction replaces the record
it corrects; for a preference job, `data.preference`, each line is a pair: the correction
chosen over the served output); it lists the feedback ids it came from, so the dataset's
manifest (its sources and their hashes) links the dataset version to the feedback, and the
model card links the model to the dataset.
"""

from __future__ import annotations

import hashlib
import json

from ftray.errors import UserError
from ftray.monitor.feedback import accepted_corrections, all_feedback
from ftray.progress import Progress
from ftray.spec import JobSpec, SourceSpec
from ftray.store import Store

CORRECTIONS = ("monitor", "corrections")  # the corrections files, one per retrain


def retrain_spec(spec: JobSpec, store: Store, progress: Progress) -> JobSpec:
    """The job spec of the next version: its sources plus the corrections file, compared
    with the production model when there is one."""
    from ftray.registry import production

    corrections = accepted_corrections(store)
    if not corrections:
        raise UserError(
            "no accepted corrections yet: corrections arrive through POST /v1/feedback and are "
            "accepted with `ftray feedback accept JOB.yaml FEEDBACK_ID` or on the review page "
            "(or automatically with monitor.accept_corrections: auto)."
        )
    if not unused_corrections(store):
        # nothing new: the same dataset, run and model as before, judged against itself
        # once it is production (`ftray monitor` skips this case; a person gets this error)
        raise UserError(
            f"nothing new to retrain on: all {len(corrections)} accepted correction(s) are in "
            f"the training data of registered models already (the latest: "
            f"{list(_corrections_files(store))[-1]}). Accept new corrections first "
            "(`ftray feedback list JOB.yaml` shows those waiting)."
        )
    served = {f["feedback_id"]: f.get("output") for f in all_feedback(store)}
    lines = [
        json.dumps(_record(spec, row, served[row["feedback_id"]]), sort_keys=True)
        for row in corrections
    ]
    body = "\n".join(lines) + "\n"
    digest = hashlib.sha256(body.encode()).hexdigest()[:12]
    name = f"corrections-{digest}.jsonl"
    if not store.fs.exists(store.path(*CORRECTIONS, name)):
        store.write_text(body, *CORRECTIONS, name)
    uri = store.uri(*CORRECTIONS, name)
    progress.note(f"{len(corrections)} accepted correction(s) → {uri}")
    # above every other source, so a correction wins over the record it corrects (rule
    # 'conflict'), the eval and validation files included
    named = [*spec.data.sources, *(spec.data.eval_sources or [])]
    named += spec.data.validation_sources or []
    top = max(source.precedence for source in named) + 1
    sources = [*spec.data.sources, SourceSpec(path=uri, precedence=top)]
    incumbent = "production" if production(store) else spec.eval.incumbent
    return spec.model_copy(
        update={
            "data": spec.data.model_copy(update={"sources": sources}),
            "eval": spec.eval.model_copy(update={"incumbent": incumbent}),
        }
    )


def unused_corrections(store: Store) -> list[dict]:
    """Accepted corrections that no registered model was trained on yet. A corrections file
    counts once a model is registered from a dataset built with it, so a retrain stopped
    before that (a crash, Ctrl-C) is retried with the same file, not skipped."""
    used: set[str] = set()
    for path in _corrections_files(store).values():
        lines = store.fs.read_text(path).splitlines()
        used.update(json.loads(line)["feedback_id"] for line in lines if line.strip())
    return [row for row in accepted_corrections(store) if row["feedback_id"] not in used]


def _corrections_files(store: Store) -> dict[str, str]:
    """{model id: the corrections file in its dataset's sources}, for every registered model
    trained on one, oldest first."""
    folder = store.uri(*CORRECTIONS)
    found: dict[str, str] = {}
    for card in store.manifests("models"):
        if not store.is_complete("datasets", card["dataset_id"]):
            continue
        for source in store.manifest("datasets", card["dataset_id"])["sources"]:
            if source["path"].startswith(folder):
                found[card["model_id"]] = source["path"]
    return found


def _record(spec: JobSpec, row: dict, served: str | None) -> dict:
    """A correction in the job's own input format (prompt/completion fields, a chat, or a
    preference pair over the `served` output; without one, prepare quarantines the pair as
    missing its rejected answer)."""
    data = spec.data
    if data.preference:
        return {
            data.prompt_field: row["prompt"],
            data.preference.chosen_field: row["completion"],
            data.preference.rejected_field: served,
            "feedback_id": row["feedback_id"],
        }
    if data.messages_field:
        chat = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
        return {data.messages_field: chat, "feedback_id": row["feedback_id"]}
    return {
        data.prompt_field: row["prompt"],
        data.completion_field: row["completion"],
        "feedback_id": row["feedback_id"],
    }
