"""One report written twice, as `report.md` and a self-contained `report.html`, from a list of
blocks: shared by the evaluation, human-review and monitoring reports.

A block is a paragraph (`str`), a `Heading`, a table (`(header, rows)` of plain values),
`Code`, or the plots (`{name: PNG bytes}`: links to `plots/<name>.png` in the Markdown, inline
images in the HTML, which loads nothing from elsewhere and runs no script).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
.pass { color: #17762c; } .fail { color: #b3261e; }
"""


@dataclass(frozen=True)
class Heading:
    """A section heading; `css` (`pass`, `fail`) colours it in the HTML."""

    text: str
    css: str = ""


@dataclass(frozen=True)
class Code:
    """Preformatted JSON."""

    text: str


def write_report(store, title: str, blocks: list, *folder: str) -> None:
    """`<folder>/report.md` and `<folder>/report.html`, and the plots' PNGs in `plots/`."""
    for block in blocks:
        if isinstance(block, dict):
            for name, data in block.items():
                store.write_bytes(data, *folder, "plots", f"{name}.png")
    markdown = "\n\n".join([f"# {title}", *map(_markdown, blocks)]) + "\n"
    store.write_text(markdown, *folder, "report.md")
    store.write_text(_page(title, "\n".join(map(_html, blocks))), *folder, "report.html")


def gate_table(gate: dict) -> tuple[list, list]:
    """The gate's rules as (header, rows)."""
    rows = [
        [r["rule"], "skipped" if r.get("skipped") else "yes" if r["passed"] else "NO", r["detail"]]
        for r in gate["rules"]
    ]
    return ["rule", "passed", "detail"], rows


def figure(width: float, height: float = 3.6):
    """A matplotlib figure (not pyplot's: no GUI, no global state) and its axes."""
    from matplotlib.figure import Figure

    made = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return made, made.add_subplot()


def png(plot) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    plot.savefig(buffer, format="png")
    return buffer.getvalue()


def _markdown(block) -> str:
    if isinstance(block, Heading):
        return f"## {block.text}"
    if isinstance(block, Code):
        return f"```json\n{block.text}\n```"
    if isinstance(block, dict):
        return "\n\n".join(f"![{name}](plots/{name}.png)" for name in block)
    if isinstance(block, tuple):  # cells on one line, pipes escaped
        head, rows = block
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            cells = (str(c).replace("|", "\\|").replace("\n", " ") for c in row)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    return block


def _html(block) -> str:
    if isinstance(block, Heading):
        css = f' class="{block.css}"' if block.css else ""
        return f"<h2{css}>{html.escape(block.text)}</h2>"
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, dict):  # data URIs: the page needs nothing else
        figures = "".join(
            f'<figure><img alt="{name}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode()}"><figcaption>{name}</figcaption></figure>'
            for name, data in block.items()
        )
        return f'<section id="plots">{figures}</section>'
    if isinstance(block, tuple):
        head, rows = block
        cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"
    return f"<p>{html.escape(block)}</p>"


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>ftray: {html.escape(title)}</title>\n<style>{STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
