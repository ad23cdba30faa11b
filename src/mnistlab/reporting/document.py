"""A small document model, rendered two ways: a self-contained HTML page and its Markdown twin.

The report is written once as a list of blocks; the two renderers keep the two files in step.
"""

import base64
import html
import os
import warnings
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


@dataclass
class InlineImage:
    """A PNG made for the report itself; the HTML embeds it, the Markdown twin points to the HTML."""

    png: bytes
    alt: str


@dataclass(frozen=True)
class Link:
    """A table cell that jumps to a `Reveal` block of the same page."""

    text: str
    target: str  # the Reveal's id


@dataclass
class Reveal:
    """Blocks shown only when a `Link` to them is followed: no script, no server (CSS :target)."""

    id: str
    blocks: list


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
td.flag { font-weight: bold; color: #a40000; }
img { max-width: 100%; display: block; margin: 1em 0; }
.reveal { display: none; border-left: 4px solid #1f77b4; padding: 0 1em; margin: 1em 0; }
.reveal:target { display: block; }
td a { color: #a40000; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def to_html(blocks: list) -> str:
    return "\n".join(_html_document_head() + [_html(block) for block in blocks] + ["</body></html>"]) + "\n"


def _html_document_head() -> list[str]:
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="generator" content="{MARK}">',
        "<title>mnistlab report</title>",
        f"<style>{_STYLE}</style></head><body>",
    ]


def _html(block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Image):
        try:
            return _img(block.path.read_bytes(), block.alt)
        except OSError as exc:  # a figure removed from its run folder: the report goes on without it
            warnings.warn(f"{block.path}: figure left out ({exc.strerror or exc})", stacklevel=2)
            return f"<p><em>{html.escape(block.alt)}: the figure {html.escape(str(block.path))} is missing</em></p>"
    if isinstance(block, InlineImage):
        return _img(block.png, block.alt)
    if isinstance(block, Preformatted):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, Reveal):
        inner = "\n".join(_html(b) for b in block.blocks)
        return f'<div class="reveal" id="{html.escape(block.id)}">{inner}</div>'
    raise TypeError(f"not a block: {block!r}")


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{html.escape(alt)}">'


def _html_cell(cell: str | Flagged | Link) -> str:
    if isinstance(cell, Flagged):
        return f'<td class="flag">{html.escape(cell.text)}</td>'
    if isinstance(cell, Link):
        return f'<td><a href="#{html.escape(cell.target)}">{html.escape(cell.text)}</a></td>'
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
            cells = [[_markdown_cell(c) for c in row] for row in block.rows]
            lines = ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            parts.append(
                "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells])
            )
        elif isinstance(block, Image):
            parts.append(f"![{block.alt}]({Path(os.path.relpath(block.path.resolve(), base.resolve())).as_posix()})")
        elif isinstance(block, Preformatted):
            parts.append(f"```\n{block.text.rstrip()}\n```")
        elif isinstance(block, InlineImage):
            parts.append(f"*{block.alt}: a figure of the HTML report*")
    return "\n\n".join(parts) + "\n"


def _markdown_cell(cell: str | Flagged | Link) -> str:
    if isinstance(cell, Flagged):
        return f"**{cell.text}**"
    return cell.text if isinstance(cell, Link) else cell
