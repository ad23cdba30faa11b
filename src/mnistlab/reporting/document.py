"""A small document model, rendered two ways: a self-contained HTML page and its Markdown twin.

The report is written once as a list of blocks; the two renderers keep the two files in step.
"""

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

from mnistlab.files import MARK


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Flagged:
    """A table cell that stands out: drawn in bold."""

    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str | Flagged]]


@dataclass
class Image:
    path: Path
    alt: str


@dataclass
class Preformatted:
    text: str


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
td.flag { font-weight: bold; color: #a40000; }
img { max-width: 100%; display: block; margin: 1em 0; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def to_html(blocks: list) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="generator" content="{MARK}">',
        "<title>mnistlab report</title>",
        f"<style>{_STYLE}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode()
            parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">')
        elif isinstance(block, Preformatted):
            parts.append(f"<pre>{html.escape(block.text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_cell(cell: str | Flagged) -> str:
    if isinstance(cell, Flagged):
        return f'<td class="flag">{html.escape(cell.text)}</td>'
    return f"<td>{html.escape(cell)}</td>"


def to_markdown(blocks: list, base: Path) -> str:
    parts = [f"<!-- {MARK} -->"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            cells = [[f"**{c.text}**" if isinstance(c, Flagged) else c for c in row] for row in block.rows]
            lines = ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            parts.append(
                "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells])
            )
        elif isinstance(block, Image):
            parts.append(f"![{block.alt}]({Path(os.path.relpath(block.path.resolve(), base.resolve())).as_posix()})")
        elif isinstance(block, Preformatted):
            parts.append(f"```\n{block.text.rstrip()}\n```")
    return "\n\n".join(parts) + "\n"
