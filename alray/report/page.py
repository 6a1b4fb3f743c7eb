"""The report as one self-contained HTML page: inline CSS, images as ``data:image/png`` URIs, no
script, no external file. Every text that comes from the folder is escaped."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from html import escape
from typing import Any, Sequence

import pyarrow as pa

__all__ = ["Section", "render_page", "format_cell", "format_seconds"]

#: Characters a table cell shows before it is cut (carried columns can be long).
CELL_CHARS = 80

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary th { width: 14em; }
figure { margin: 0.5em 0 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.3em; max-width: 60em; }
pre { background: #f8f8f8; padding: 0.8em; white-space: pre-wrap; font-size: 0.85em; }
p.note { color: #666; font-style: italic; }
"""


@dataclass(frozen=True)
class Section:
    """One heading of the page: a plot with its caption, or a note where the plot is absent.

    Attributes:
        title: the heading.
        caption: one sentence on how to read the plot (or why it is absent).
        png: the plot; None for a note only.
        pre: preformatted text under the plot (a table the command line prints).
    """

    title: str
    caption: str
    png: bytes | None = None
    pre: str | None = None


def format_seconds(seconds: float | None) -> str:
    """``9.3 s``, ``4 min 05 s``, ``2 h 03 min``; an em dash when unknown."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_cell(value: Any) -> str:
    """A value as short text: numbers to 4 significant digits, long texts and bytes cut."""
    if isinstance(value, float):
        text = f"{value:.4g}" if math.isfinite(value) else str(value)
    elif isinstance(value, bytes):
        text = f"<{len(value):,} bytes>"
    elif value is None:
        text = "null"
    else:
        text = str(value)
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…"


def _summary(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _section(section: Section) -> str:
    parts = [f"<h2>{escape(section.title)}</h2>"]
    if section.png is None:
        parts.append(f'<p class="note">{escape(section.caption)}</p>')
    else:
        parts.append(f"<figure>{_image(section.png, section.title)}"
                     f"<figcaption>{escape(section.caption)}</figcaption></figure>")
    if section.pre:
        parts.append(f"<pre>{escape(section.pre)}</pre>")
    return "\n".join(parts)


def _rows_table(table: pa.Table, formats: dict[str, Any]) -> str:
    """``table`` as HTML, numbers right-aligned; ``formats`` maps a column to a function that
    gives its cell text (the predicted class's name)."""
    names = table.column_names
    head = "".join(f"<th>{escape(name)}</th>" for name in names)
    body = []
    for row in table.to_pylist():
        cells = []
        for name in names:
            value = row[name]
            text = formats[name](value) if name in formats and value is not None \
                else format_cell(value)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td class="num">{escape(text)}</td>' if numeric
                         else f"<td>{escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_page(title: str, subtitle: str, summary: Sequence[tuple[str, str]],
                sections: Sequence[Section], top: pa.Table | None = None,
                top_formats: dict[str, Any] | None = None, top_note: str = "") -> str:
    """The whole page: title, summary table, the sections in order, then the top rows of the
    selection (when ``top`` is given) with ``top_note`` above them."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{escape(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
             f"<h1>{escape(title)}</h1>", f'<p class="sub">{escape(subtitle)}</p>',
             _summary(summary)]
    parts += [_section(section) for section in sections]
    if top is not None:
        parts += [f"<h2>top {top.num_rows} of the selection</h2>",
                  f"<p>{escape(top_note)}</p>" if top_note else "",
                  _rows_table(top, top_formats or {})]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
