"""Feedback on served answers, and the decisions that let corrections into the next dataset.

Layout under `<storage>/<project>/monitor/`, one JSON file per event with time-ordered unique
names (concurrent writers on object storage never overwrite each other):

    feedback/<time>-<id>.json    what POST /v1/feedback received: feedback_id, request_id,
                                 model, rating, flag, correction, comment, prompt, output
    decisions/<time>-<id>.json   a person's (or `accept_corrections: auto`'s) verdict on one
                                 feedback: accept | reject, by whom, and the accepted output

A feedback is *flagged* when it has `flag` or a `correction`; a flagged feedback waits for a
decision; the latest decision wins. Accepted corrections are what `ftray retrain` adds.
"""

from __future__ import annotations

import uuid

from ftray.errors import UserError
from ftray.store import Store, current_user, utc_stamp

FEEDBACK = ("monitor", "feedback")
DECISIONS = ("monitor", "decisions")


def store_feedback(store: Store, feedback: dict) -> dict:
    """Write one feedback (already validated and redacted); returns it with its id."""
    record = {"feedback_id": f"fb-{uuid.uuid4().hex[:12]}", "time": utc_stamp(), **feedback}
    store.write_event(record, *FEEDBACK)
    return record


def decide(
    store: Store,
    feedback_id: str,
    decision: str,
    *,
    by: str | None = None,
    output: str | None = None,
) -> dict:
    """Record `accept` or `reject` for a feedback; `output` overrides its correction."""
    if decision not in ("accept", "reject"):
        raise UserError(f"a feedback decision is 'accept' or 'reject', not {decision!r}")
    known = {f["feedback_id"]: f for f in all_feedback(store)}
    if feedback_id not in known:
        raise UserError(
            f"no feedback {feedback_id!r}; `ftray feedback list JOB.yaml` shows the flagged ones"
        )
    chosen = output if output is not None else known[feedback_id].get("correction")
    if decision == "accept" and not chosen:
        raise UserError(
            f"{feedback_id} has no correction to accept; give the right answer with --output"
        )
    record = {
        "feedback_id": feedback_id,
        "decision": decision,
        "output": chosen if decision == "accept" else None,
        "by": by or current_user(),
        "at": utc_stamp(),
    }
    store.write_event(record, *DECISIONS)
    return record


def all_feedback(store: Store) -> list[dict]:
    """Every feedback, oldest first."""
    return store.read_events(*FEEDBACK)


def decisions(store: Store) -> dict[str, dict]:
    """The latest decision per feedback id."""
    return {d["feedback_id"]: d for d in store.read_events(*DECISIONS)}


def is_flagged(feedback: dict) -> bool:
    """Whether feedback asks for a decision: flagged, or carrying a correction."""
    return bool(feedback.get("flag") or feedback.get("correction"))


def pending(store: Store) -> list[dict]:
    """Flagged feedback with no decision yet, oldest first."""
    decided = decisions(store)
    return [f for f in all_feedback(store) if is_flagged(f) and f["feedback_id"] not in decided]


def accepted_corrections(store: Store) -> list[dict]:
    """(prompt, accepted output) for every accepted feedback that knows its prompt, with the
    feedback id; oldest first."""
    decided = decisions(store)
    return [
        {"feedback_id": f["feedback_id"], "prompt": f["prompt"], "completion": d["output"]}
        for f in all_feedback(store)
        if (d := decided.get(f["feedback_id"])) and d["decision"] == "accept" and f.get("prompt")
    ]
