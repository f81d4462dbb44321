"""`reviews/report.md` and a self-contained `reviews/report.html`: the human review of one
evaluation, next to its automatic report (which stays as `ftray eval` wrote it).

Written by `ftray review results` while the review runs, and once more by `ftray review
decide` with the verdict it recorded.
"""

from __future__ import annotations

import html

from ftray.evaluate.render import gate_table, html_table, markdown_table, page, write_reports
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
    heading = _heading(found, decided)
    tables = _tables(found, ratings)
    markdown, html_page = _markdown(found, heading, tables), _html(found, heading, tables)
    write_reports(store, markdown, html_page, "evals", eval_id, "reviews")


def _heading(found: dict, decided: bool) -> str:
    heading = f"Verdict: {VERDICTS[found['status']]}"
    if found["status"] in ("promote", "record", "reject") and not decided:
        heading += " (not recorded yet: `ftray review decide` records it)"
    return heading


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


def _agreement(found: dict) -> str:
    agreement = found["human"]["agreement"]
    if agreement["method"] is None:
        return "Agreement: no item has been rated by two reviewers yet."
    name = "Cohen's" if agreement["method"] == "cohen" else "Fleiss'"
    kappa = "undefined" if agreement["kappa"] is None else f"{agreement['kappa']:.3f}"
    return (
        f"Agreement: {name} kappa {kappa} on {agreement['items']} items rated by "
        f"{agreement['reviewers']} reviewers (observed agreement {agreement['observed']:.3f})."
    )


def _tables(found: dict, ratings: list[dict]) -> dict[str, tuple[list, list]]:
    human = found["human"]
    rate, interval = human["win_rate"], human["win_rate_interval"]
    return {
        "gate": gate_table(found["gate"]),
        "win_rate": (
            ["candidate win rate", "interval", "items", "ratings counted"],
            [
                [
                    "–" if rate is None else f"{rate:.4f}",
                    "–" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]",
                    human["win_rate_items"],
                    human["win_rate_ratings"],
                ]
            ],
        ),
        "choices": (
            ["candidate better", "incumbent better", "tie", "both bad"],
            [list(human["counts"].values())],
        ),
        "comments": (
            ["item", "reviewer", "preferred", "comment"],
            [
                [r["item"], r["reviewer"], r["preferred"], r["comment"]]
                for r in sorted(ratings, key=lambda r: (r["item"], r["reviewer"]))
                if r["comment"]
            ],
        ),
    }


def _markdown(found: dict, heading: str, tables: dict) -> str:
    def table(name):
        return markdown_table(*tables[name])

    parts = [
        f"# Human review of evaluation {found['eval_id']}",
        _intro(found),
        f"## {heading}",
        table("gate"),
        "## Win rate",
        f"Ties count half, 'both bad' is left out; interval: {found['human']['interval']}.",
        table("win_rate"),
        table("choices"),
        _agreement(found),
        "## Comments",
        table("comments") if tables["comments"][1] else "None.",
    ]
    return "\n\n".join(parts) + "\n"


def _html(found: dict, heading: str, tables: dict) -> str:
    def table(name):
        return html_table(*tables[name], ident=name)

    status = {"promote": "pass", "record": "pass", "reject": "fail"}.get(found["status"], "")
    body = f"""<p>{html.escape(_intro(found))}</p>
<h2 id="verdict" class="{status}">{html.escape(heading)}</h2>
{table("gate")}
<h2>Win rate</h2>
<p>Ties count half, 'both bad' is left out; interval: {html.escape(found["human"]["interval"])}.</p>
{table("win_rate")}
{table("choices")}
<p id="agreement">{html.escape(_agreement(found))}</p>
<h2>Comments</h2>
{table("comments")}"""
    return page(f"Human review of evaluation {found['eval_id']}", body)
