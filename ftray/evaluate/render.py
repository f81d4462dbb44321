"""Markdown and self-contained HTML building blocks shared by the evaluation report and the
human-review report: tables of plain values, the gate's rules, one page style."""

from __future__ import annotations

import base64
import html
import io

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
.pass { color: #17762c; } .fail { color: #b3261e; }
"""


def gate_table(gate: dict) -> tuple[list, list]:
    """The gate's rules as (header, rows)."""
    rows = [
        [r["rule"], "skipped" if r.get("skipped") else "yes" if r["passed"] else "NO", r["detail"]]
        for r in gate["rules"]
    ]
    return ["rule", "passed", "detail"], rows


def markdown_table(head: list, rows: list) -> str:
    """A Markdown table; cells on one line, pipes escaped."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = (str(c).replace("|", "\\|").replace("\n", " ") for c in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def html_table(head: list, rows: list, ident: str | None = None) -> str:
    """An HTML table with every cell escaped."""
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    attribute = f' id="{ident}"' if ident else ""
    return f"<table{attribute}><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def write_reports(store, markdown: str, html_page: str, *folder: str) -> None:
    """The two renderings of a report as `<folder>/report.md` and `<folder>/report.html`."""
    store.write_text(markdown, *folder, "report.md")
    store.write_text(html_page, *folder, "report.html")


def png(figure) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_plots(store, plots: dict[str, bytes], *folder: str) -> None:
    """Each PNG as `<folder>/<name>.png` in the store (what the Markdown report links)."""
    for name, data in plots.items():
        store.write_bytes(data, *folder, f"{name}.png")


def figures_html(plots: dict[str, bytes]) -> str:
    """Named PNGs inlined as <figure>s (data URIs: the page needs nothing else)."""
    return "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{name}</figcaption></figure>'
        for name, data in plots.items()
    )


def page(title: str, body: str) -> str:
    """A whole HTML document: no scripts, nothing loaded from elsewhere."""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>ftray: {html.escape(title)}</title>\n<style>{STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
