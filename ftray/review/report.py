"""`reviews/report.md` and a self-contained `reviews/report.html`: the human review of one
evaluation, next to its automatic report (which stays as `ftray eval` wrote it), or of a
shadow model's recorded pairs (`shadows/<model-id>/reviews/`).

Written by `ftray review results` while the review runs, and once more by `ftray review
decide` with the verdict it recorded (evaluations only: a shadow has no gate).
"""

from __future__ import annotations

from ftray.evaluate.render import Heading, gate_table, write_report
from ftray.store import Store

VERDICTS = {
    "promote": "PASSED: promote",
    "record": "PASSED: recorded only (eval.gate.promote is off)",
    "reject": "FAILED: keep the incumbent",
    "pending": "AWAITING RATINGS",
    "final": "no human rule in the gate: `ftray eval` decided",
}


def write_review_report(
    store: Store, eval_id: str, found: dict, ratings: list[dict], *, decided: bool
) -> None:
    """Render both formats into `evals/<eval_id>/reviews/`."""
    status = {"promote": "pass", "record": "pass", "reject": "fail"}.get(found["status"], "")
    heading = f"Verdict: {VERDICTS[found['status']]}"
    if status and not decided:
        heading += " (not recorded yet: `ftray review decide` records it)"
    blocks = [
        _intro(found),
        Heading(heading, status),
        gate_table(found["gate"]),
        *_rating_blocks(found["human"], ratings, ("candidate", "incumbent")),
    ]
    title = f"Human review of evaluation {found['eval_id']}"
    write_report(store, title, blocks, "evals", eval_id, "reviews")


def write_shadow_report(store: Store, found: dict, ratings: list[dict]) -> None:
    """Render both formats into `shadows/<model-id>/reviews/`."""
    model_id, pairs, human = found["shadow_model"], found["pairs"], found["human"]
    plural = "" if human["reviewers"] == 1 else "s"
    intro = (
        f"Pairwise preference on the production traffic mirrored to shadow {model_id}: "
        f"{pairs['recorded']} recorded pairs, {pairs['agreed']} of them left out because both "
        f"answers agree, {pairs['queued']} to review; {human['ratings']} ratings of "
        f"{human['items_rated']} pairs by {human['reviewers']} reviewer{plural}. Each reviewer "
        "saw the shadow's and production's answers as A and B, drawn per pair and reviewer; "
        "the ratings below are mapped back to the arms."
    )
    blocks = [intro, *_rating_blocks(human, ratings, ("shadow", "production"))]
    title = f"Human review of shadow {model_id}"
    write_report(store, title, blocks, "shadows", model_id, "reviews")


def _rating_blocks(human: dict, ratings: list[dict], arms: tuple[str, str]) -> list:
    """The win rate, the counts per choice, agreement and comments; `arms` names the
    candidate and the incumbent for people."""
    rate, interval = human["win_rate"], human["win_rate_interval"]
    named = {"candidate": arms[0], "incumbent": arms[1]}
    comments = [
        [r["item"], r["reviewer"], named.get(r["preferred"], r["preferred"]), r["comment"]]
        for r in sorted(ratings, key=lambda r: (r["item"], r["reviewer"]))
        if r["comment"]
    ]
    return [
        Heading("Win rate"),
        f"Ties count half, 'both bad' is left out; interval: {human['interval']}.",
        (
            [f"{arms[0]} win rate", "interval", "items", "ratings counted"],
            [
                [
                    "–" if rate is None else f"{rate:.4f}",
                    "–" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]",
                    human["win_rate_items"],
                    human["win_rate_ratings"],
                ]
            ],
        ),
        (
            [f"{arms[0]} better", f"{arms[1]} better", "tie", "both bad"],
            [list(human["counts"].values())],
        ),
        _agreement(human["agreement"]),
        Heading("Comments"),
        (["item", "reviewer", "preferred", "comment"], comments) if comments else "None.",
    ]


def _intro(found: dict) -> str:
    human = found["human"]
    model = f" (model {found['model_id']}, stage {found['stage']})" if found["model_id"] else ""
    plural = "" if human["reviewers"] == 1 else "s"
    return (
        f"Pairwise preference on evaluation {found['eval_id']}{model}: {human['ratings']} "
        f"ratings of {human['items_rated']} items by {human['reviewers']} reviewer{plural}. "
        "Each reviewer saw the candidate's and the incumbent's answers as A and B, drawn per "
        "item and reviewer; the ratings below are mapped back to the arms."
    )


def _agreement(agreement: dict) -> str:
    if agreement["method"] is None:
        return "Agreement: no item has been rated by two reviewers yet."
    name = "Cohen's" if agreement["method"] == "cohen" else "Fleiss'"
    kappa = "undefined" if agreement["kappa"] is None else f"{agreement['kappa']:.3f}"
    return (
        f"Agreement: {name} kappa {kappa} on {agreement['items']} items rated by "
        f"{agreement['reviewers']} reviewers (observed agreement {agreement['observed']:.3f})."
    )
