"""The report's two renderings, from one list of sections: ``report.md`` (images by file name)
and ``report.html`` (self-contained: every figure's SVG inline, the tables, the sweep's context, a
small stylesheet; no script and no external resource, so it opens anywhere and prints as it shows).

Each figure is a ``<figure id="fig-NAME">``, each table a ``<table id="table-NAME">``: the
browser test finds every one of them in the rendered page.
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moesim.kernels import tables
from moesim.kernels.files import atomic_write_text


@dataclass
class Table:
    name: str
    rows: Sequence[Mapping[str, Any]]
    columns: Sequence[str]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Section:
    name: str
    title: str
    paragraphs: Sequence[str]
    table: Table | None = None
    figure: str | None = None  # stem of the figure's files (PNG for markdown, SVG inlined in HTML)


def markdown_page(sections: Sequence[Section]) -> str:
    md: list[str] = []
    for i, s in enumerate(sections):
        md += [("# " if i == 0 else "## ") + s.title, ""]
        md += [p for p in s.paragraphs if p] + ([""] if s.paragraphs else [])
        if s.figure:
            md += [f"![{s.title}]({s.figure}.png)", ""]
        if s.table is not None and s.table.rows:
            md += [tables.markdown(s.table.rows, s.table.columns, s.table.headers), ""]
    return "\n".join(md)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.3rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem;
border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table.data { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
table.data th, table.data td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #e4e4e4; text-align: left;
                              font-variant-numeric: tabular-nums; }
table.data th { background: #f4f4f4; position: sticky; top: 0; }
figure { margin: 0.8rem 0; } figure svg { max-width: 100%; height: auto; }
code { background: #f4f4f4; padding: 0 0.2rem; border-radius: 3px; }
nav a { margin-right: 0.8rem; font-size: 0.9rem; }
"""


def _inline(text: str) -> str:
    """Escape, then render markdown's inline `code`."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _html.escape(text))


_ID = re.compile(r'\bid="([^"]+)"')


def inline_svg(path: Path, prefix: str) -> str:
    """The SVG file's ``<svg>`` element, its ids prefixed so that several figures in one page never
    share an id (matplotlib names glyphs and clip paths alike in every file)."""
    text = path.read_text()
    text = text[text.index("<svg"):]
    for old in set(_ID.findall(text)):
        new = f"{prefix}-{old}"
        text = text.replace(f'id="{old}"', f'id="{new}"').replace(f"#{old})", f"#{new})")
        text = text.replace(f'href="#{old}"', f'href="#{new}"')
    return text


def html_page(sections: Sequence[Section], fig_dir: Path) -> str:
    title = sections[0].title if sections else "report"
    body: list[str] = []
    nav = " ".join(f'<a href="#{s.name}">{_html.escape(s.title)}</a>' for s in sections[1:])
    for i, s in enumerate(sections):
        tag = "h1" if i == 0 else "h2"
        body.append(f'<section id="{s.name}"><{tag}>{_html.escape(s.title)}</{tag}>')
        body += [f"<p>{_inline(p)}</p>" for p in s.paragraphs if p]
        if i == 0 and nav:
            body.append(f"<nav>{nav}</nav>")
        if s.figure:
            svg = inline_svg(fig_dir / f"{s.figure}.svg", s.figure)
            body.append(f'<figure id="fig-{s.figure}">{svg}</figure>')
        if s.table is not None and s.table.rows:
            body.append(tables.html(s.table.rows, s.table.columns, s.table.headers, table_id=f"table-{s.table.name}"))
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # an empty icon: the browser then asks for no favicon.ico (a missing one is a console error)
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{_html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_page(path: Path, sections: Sequence[Section], fig_dir: Path) -> Path:
    atomic_write_text(path, html_page(sections, fig_dir))
    return path


def manifest(sections: Sequence[Section]) -> dict[str, list[str]]:
    """The ids of the figures and tables the page holds (what a test looks for in the browser)."""
    return {"figures": [f"fig-{s.figure}" for s in sections if s.figure],
            "tables": [f"table-{s.table.name}" for s in sections if s.table is not None and s.table.rows]}
