"""The review app's HTML: plain pages and forms with inline CSS, no scripts and nothing fetched
from elsewhere, so the app works on a machine without internet and under a strict CSP."""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from ftray.review.ratings import CHOICES, COMMENT_LIMIT, Item, Pair

CHOICE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #1d1d1f; }
header { display: flex; gap: 1em; align-items: baseline; border-bottom: 1px solid #ddd;
         padding-bottom: .5em; }
header .who { margin-left: auto; }
header form { display: inline; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f8; padding: .8em;
      border-radius: 4px; margin: .3em 0; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.choices button { font-size: 1.05em; padding: .5em 1.2em; margin: .5em .5em 0 0; }
textarea { width: 100%; min-height: 4em; box-sizing: border-box; }
.mine { background: #eef5ff; padding: .5em; border-radius: 4px; }
.error { color: #b3261e; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
"""


def page(title: str, body: str, *, prefix: str = "", reviewer: str | None = None) -> str:
    """A whole HTML document with the header (and a sign-out button once signed in)."""
    who = ""
    if reviewer:
        who = (
            f'<span class="who">signed in as <b id="reviewer">{escape(reviewer)}</b> '
            f'<form method="post" action="{prefix}/logout"><button>Sign out</button></form>'
            "</span>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ftray review: {escape(title)}</title><style>{STYLE}</style></head><body>
<header><a href="{prefix}/">ftray review</a>{who}</header>
<main><h1>{escape(title)}</h1>
{body}
</main></body></html>
"""


def login_page(prefix: str, next_path: str, error: str | None, tokens: bool) -> str:
    """Ask for a name (open app) or an access token (app started with `--tokens`)."""
    what = "Access token" if tokens else "Your name"
    hint = (
        "Paste the token you were given."
        if tokens
        else "Letters, digits and . _ @ - ; it is recorded with each rating or decision."
    )
    problem = f'<p class="error">{escape(error)}</p>' if error else ""
    return page(
        "Sign in",
        f"""{problem}
<form method="post" action="{prefix}/login">
<input type="hidden" name="next" value="{escape(next_path)}">
<p><label for="token">{what}</label><br>
<input id="token" name="token" type="{"password" if tokens else "text"}" required
 autocomplete="off"></p>
<p>{escape(hint)}</p>
<button id="sign-in">Start reviewing</button>
</form>""",
        prefix=prefix,
    )


def index_page(
    prefix: str, reviewer: str, pairwise: str | None, queues: list[tuple[str, str, str, int, int]]
) -> str:
    """The queues with their progress: (title, path, what counts as done, done, total);
    `pairwise` says what the pairwise queue reviews (None: there is none)."""
    rows = "".join(
        f'<tr><td><a href="{prefix}{path}">{escape(title)}</a></td>'
        f"<td>{done} of {total} {label}</td></tr>"
        for title, path, label, done, total in queues
    )
    about = (
        f'<p id="eval">Pairwise review of {escape(pairwise)}.</p>'
        if pairwise
        else '<p id="eval">No evaluation yet, so no pairwise review: <code>ftray eval JOB.yaml'
        "</code> makes one; restart <code>ftray review</code> after it.</p>"
    )
    return page(
        "Review queues",
        f"{about}<table><tr><th>queue</th><th>progress</th></tr>{rows}</table>",
        prefix=prefix,
        reviewer=reviewer,
    )


def _answer(label: str, text: str) -> str:
    return (
        f'<section id="answer-{label.lower()}"><h2>{label}</h2><pre>{escape(text)}</pre></section>'
    )


def pair_page(
    prefix: str,
    reviewer: str,
    pair: Pair,
    side: str,
    position: tuple[int, int, int],
    mine: dict | None,
    skip: Item | None,
) -> str:
    """One pair: the input (with the reference answer, if the pair has one), both answers with
    the candidate on `side`, and the choices; `skip`: the next item this reviewer has not rated.

    `position`: (this item's place in the reviewer's order, items rated, items in all).
    """
    place, done, total = position
    a, b = (pair.candidate, pair.incumbent) if side == "A" else (pair.incumbent, pair.candidate)
    mine_note = ""
    if mine:
        mine_note = (
            f'<p class="mine" id="mine">Your rating: {CHOICE_LABELS[mine["choice"]]}'
            + (f" ({escape(mine['comment'])})" if mine["comment"] else "")
            + ". Choose again to change it.</p>"
        )
    buttons = "".join(
        f'<button name="choice" value="{c}" id="choice-{c}">{CHOICE_LABELS[c]}</button>'
        for c in CHOICES
    )
    skip_link = ""
    if skip is not None:
        skip_link = f'<a href="{prefix}/pairwise/{_link(skip)}" id="skip">Skip</a> · '
    reference = ""
    if pair.reference is not None:
        reference = (
            "<details><summary>Reference answer from the dataset</summary>"
            f"<pre>{escape(pair.reference)}</pre></details>"
        )
    body = f"""<p id="progress">Pair {place} of {total} in your queue · you have rated
<b id="done">{done}</b> of {total} <progress value="{done}" max="{total}"></progress></p>
<section id="input"><h2>Input</h2><pre>{escape(pair.prompt)}</pre>
{reference}</section>
<div class="pair">{_answer("A", a)}{_answer("B", b)}</div>
{mine_note}
<form method="post" action="{prefix}/pairwise/{_link(pair.item)}">
<p><label for="comment">Comment (optional)</label><br>
<textarea id="comment" name="comment" maxlength="{COMMENT_LIMIT}"></textarea></p>
<div class="choices">{buttons}</div>
</form>
<p>{skip_link}<a href="{prefix}/pairwise/done">Your ratings</a></p>"""
    return page("Which answer is better?", body, prefix=prefix, reviewer=reviewer)


def _link(item: Item) -> str:
    """An item as one path segment of a link (a shadow pair's is a response id)."""
    return escape(quote(str(item), safe=""))


def done_page(prefix: str, reviewer: str, total: int, mine: list[dict]) -> str:
    """This reviewer's own ratings (never anyone else's), with links to change them."""
    rows = "".join(
        f'<tr><td><a href="{prefix}/pairwise/{_link(r["item"])}">item {escape(str(r["item"]))}'
        "</a></td>"
        f"<td>{CHOICE_LABELS[r['choice']]}</td><td>{escape(r['comment'])}</td></tr>"
        for r in mine
    )
    status = (
        f"You have rated all {total} pairs. Thank you!"
        if len(mine) == total
        else f'You have rated {len(mine)} of {total} pairs. <a href="{prefix}/pairwise">'
        "Continue</a>"
    )
    return page(
        "Your ratings",
        f'<p id="status">{status}</p><table id="mine"><tr><th>pair</th><th>your choice</th>'
        f"<th>comment</th></tr>{rows}</table>",
        prefix=prefix,
        reviewer=reviewer,
    )


def flagged_page(
    prefix: str,
    reviewer: str,
    item: dict,
    position: tuple[int, int, int, int],
    skip: str | None,
) -> str:
    """One flagged output: the prompt, the model's answer, the feedback, and a corrected
    output (prefilled with the proposed correction) to accept, or reject.

    `position`: (its place among those waiting, waiting, decided, flagged in all).
    """
    place, waiting, done, total = position
    prompt = item.get("prompt")
    prompt_html = (
        f"<pre>{escape(prompt)}</pre>"
        if prompt
        else '<p class="error">The prompt of this request is not known, so an accepted '
        "output cannot enter the dataset.</p>"
    )
    details = [
        ("model", item.get("model")),
        ("rating", item.get("rating")),
        ("flagged", "yes" if item.get("flag") else "no (a correction was sent)"),
        ("comment or check", item.get("comment")),
        ("received", item.get("time")),
        ("request", item.get("request_id")),
    ]
    rows = "".join(
        f"<tr><th>{name}</th><td>{escape(str(value))}</td></tr>"
        for name, value in details
        if value not in (None, "")
    )
    correction = item.get("correction") or ""
    hint = (
        "The correction sent with the feedback: accept it as it is, or edit it first."
        if correction
        else "No correction was sent: write the right answer to accept one."
    )
    fid = escape(item["feedback_id"])
    skip_link = f'<a href="{prefix}/flagged/{escape(skip)}" id="skip">Skip</a>' if skip else ""
    # The newline after <textarea> is dropped by HTML parsers, so a correction that starts
    # with one keeps it.
    body = f"""<p id="progress">Flagged output {place} of {waiting} waiting ·
<b id="done">{done}</b> of {total} decided <progress value="{done}" max="{total}"></progress></p>
<section id="prompt"><h2>Prompt</h2>{prompt_html}</section>
<section id="output"><h2>The model's answer</h2><pre>{escape(item.get("output") or "")}</pre>
</section>
<table id="feedback">{rows}</table>
<form method="post" action="{prefix}/flagged/{fid}">
<p><label for="correction">Corrected output</label><br>{escape(hint)}</p>
<textarea id="correction" name="output" rows="8">
{escape(correction)}</textarea>
<div class="choices">
<button name="decision" value="accept" id="decision-accept">Accept this output</button>
<button name="decision" value="reject" id="decision-reject">Reject</button>
</div>
<p>Accepting adds the prompt and this output to the next dataset version; rejecting adds
nothing.</p>
</form>
<p>{skip_link}</p>"""
    return page("Flagged output", body, prefix=prefix, reviewer=reviewer)


def flagged_empty_page(prefix: str, reviewer: str, total: int) -> str:
    """What the flagged queue shows when no flagged output waits (all `total` decided)."""
    return page(
        "Flagged outputs",
        f'<p id="status">No flagged output waits for a decision ({total} of {total} decided).</p>',
        prefix=prefix,
        reviewer=reviewer,
    )


def message_page(prefix: str, title: str, text: str, reviewer: str | None = None) -> str:
    """An error or notice, with the way back."""
    return page(
        title,
        f'<p class="error">{escape(text)}</p><p><a href="{prefix}/">Back to the queues</a></p>',
        prefix=prefix,
        reviewer=reviewer,
    )
