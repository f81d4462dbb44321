"""Human review's place in the gate: results so far, and the decision that settles a gate
waiting for ratings.

Contract (the review stage, `ftray review`). In: an `EvalRef`'s folder (`evals/<eval-id>/`:
its pairs and gate) and the ratings under its `reviews/pairwise/`, written by the review app.
Out: `reviews/decision.json` (the gate settled with the ratings) and the review report. Side
effects: the verdict recorded in the registry (promote or reject the candidate), once.

With `eval.gate.min_human_win_rate` set, `ftray eval` applies every automatic rule and, when
they all pass, leaves the candidate pending (`gate["pending"]`, registry stage `candidate`).
`decide` applies the same gate again with the ratings; once `min_human_ratings` are in it
records the verdict through the registry (promote or reject) and then writes
`reviews/decision.json`, so a run interrupted in between is completed by running it again.
"""

from __future__ import annotations

from ftray.errors import UserError
from ftray.evaluate.gate import apply_to_stored
from ftray.evaluate.report import rewrite_report
from ftray.registry import get_model, list_models, promote, reject, was_decided
from ftray.review.ratings import EvalPairs, RatingLog, eval_manifest, latest
from ftray.review.report import write_review_report
from ftray.review.stats import summarize
from ftray.spec import GateSpec
from ftray.store import Store, utc_stamp

DECISION = "decision.json"


def human_gate(store: Store, eval_id: str) -> dict | None:
    """The gate as `decide` settled it, or None while (or when) there is no decision."""
    if not store.fs.exists(store.path("evals", eval_id, "reviews", DECISION)):
        return None
    return store.read_json("evals", eval_id, "reviews", DECISION)["gate"]


def results(store: Store, eval_id: str) -> dict:
    """The ratings summarized, the gate applied with them, and what that means now.

    `status`: 'final' when the gate has no human rule (its verdict was final at `ftray eval`);
    else 'pending' (awaiting ratings), or what `decide` does or did: 'promote', 'reject', or
    'record' (passed, but `eval.gate.promote` is off). Until a decision, also (re)writes
    `reviews/report.md|html`.
    """
    found, ratings = _apply(store, eval_id)
    if human_gate(store, eval_id) is None:
        write_review_report(store, eval_id, found, ratings, decided=False)
        rewrite_report(store, eval_id, found["human"])
    return found


def decide(store: Store, eval_id: str) -> dict:
    """Settle a gate that waits for human review: promote or reject the candidate, once.

    Returns `results` plus `decided` and the model's registry `stage`. Raises UserError when
    the gate has no human rule or no model was registered for the evaluation.
    """
    if human_gate(store, eval_id) is not None:
        recorded = store.read_json("evals", eval_id, "reviews", DECISION)
        return {**recorded, "stage": get_model(store, recorded["model_id"])["stage"]}
    found, ratings = _apply(store, eval_id)
    if found["status"] == "final":
        raise UserError(
            f"evaluation {eval_id}'s gate has no human rule (eval.gate.min_human_win_rate), so "
            "its verdict was final at `ftray eval`; `ftray review results` shows the ratings."
        )
    model_id, human = found["model_id"], found["human"]
    if model_id is None:
        raise UserError(
            f"no model is registered for evaluation {eval_id}; `ftray eval JOB.yaml` "
            "registers the candidate before its review can decide."
        )
    if found["status"] == "pending":
        return {**found, "decided": False}
    why = (
        f"human review of {eval_id}: win rate {human['win_rate']:.3f} over "
        f"{human['win_rate_ratings']} ratings"
    )
    if not was_decided(store, model_id):
        if found["status"] == "reject":
            failed = [r["rule"] for r in found["gate"]["rules"] if not r["passed"]]
            reject(store, model_id, reason=f"{why}; failed: {'; '.join(failed)}")
        elif found["status"] == "promote":
            # The card keeps the gate `ftray eval` wrote (pending, so not passed); the verdict
            # that lets the candidate through is the one just computed.
            promote(store, model_id, reason=why, force=True)
    decision = {**found, "decided": True, "decided_at": utc_stamp()}
    del decision["stage"]  # a stage changes later (rollback); it is read from the registry
    store.write_json(decision, "evals", eval_id, "reviews", DECISION)
    write_review_report(store, eval_id, found, ratings, decided=True)
    rewrite_report(store, eval_id, found["human"])
    return {**decision, "stage": get_model(store, model_id)["stage"]}


def _apply(store: Store, eval_id: str) -> tuple[dict, list[dict]]:
    """(the gate applied with the ratings and what it means, the ratings it counted)."""
    manifest = eval_manifest(store, eval_id)
    spec = GateSpec.model_validate(manifest["spec"]["gate"])
    ratings = latest(RatingLog(store, EvalPairs(store, eval_id)).all())
    human = summarize(ratings, manifest["spec"].get("confidence_level", 0.95))
    gate = apply_to_stored(spec, manifest, human)
    if spec.min_human_win_rate is None:
        status = "final"
    elif gate["pending"]:
        status = "pending"
    elif not gate["passed"]:
        status = "reject"
    else:
        status = "promote" if spec.promote else "record"
    card = _model_for(store, eval_id)
    found = {
        "eval_id": eval_id,
        "model_id": card["model_id"] if card else None,
        "stage": card["stage"] if card else None,
        "status": status,
        "human": human,
        "gate": gate,
    }
    return found, ratings


def _model_for(store: Store, eval_id: str) -> dict | None:
    """The model registered from this evaluation (one per eval: its id hashes the run)."""
    return next((card for card in list_models(store) if card["eval_id"] == eval_id), None)
