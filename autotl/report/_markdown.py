"""The Markdown backend: ``report.md``, its plots referenced as files in ``report_files/``."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from autotl.report._common import REPORT_FILES
from autotl.report._document import (
    Code,
    Column,
    Document,
    Facts,
    Figure,
    Inline,
    Note,
    Paragraph,
    Preformatted,
    SectionFn,
    Strong,
    Subheading,
    Table,
    Thumbnails,
    ThumbPairs,
    build_document,
)
from autotl.report._sections import SECTIONS

Figures = dict[str, bytes]


def _text(text: Any) -> str:
    """Data as Markdown text: one line, no table-breaking pipe, no raw HTML."""
    return (
        str("" if text is None else text).replace("|", "\\|").replace("<", "\\<").replace("\n", " ")
    )


def _code(text: str) -> str:
    """A code span that survives backticks inside it."""
    text = text.replace("\n", " ")
    ticks = "`" * (1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _inline(text: Inline) -> str:
    if isinstance(text, tuple):
        return "".join(_inline(t) for t in text)
    if isinstance(text, Strong):
        return f"**{_text(text.text)}**"
    if isinstance(text, Code):
        return _code(text.text)
    return _text(text)


def _table(t: Table, _: Figures) -> list[str]:
    return [
        "| " + " | ".join(_text(c.header) for c in t.columns) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in t.columns) + "|",
        *("| " + " | ".join(_text(cell) for cell in row) + " |" for row in t.rows),
    ]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _thumbnails(t: Thumbnails, figs: Figures) -> list[str]:
    """A table: the thumbnail, its fields (numbers right-aligned), the file it came from."""
    names = [k for k, _ in t.items[0].fields] if t.items else []
    numeric = [all(_is_number(dict(m.fields)[k]) for m in t.items) for k in names]
    columns = (Column("image"), *(Column(k, n) for k, n in zip(names, numeric)), Column("file"))
    rows = tuple((f"![]({m.image})", *(v for _, v in m.fields), m.label) for m in t.items)
    return _table(Table(columns, rows), figs)


def _pairs(t: ThumbPairs, figs: Figures) -> list[str]:
    """A table: each file and its twin, their fields, and both files."""
    columns = ("image", "twin", *(k for k, _ in t.items[0][0].fields), "file", "twin file")
    rows = tuple(
        (f"![]({a.image})", f"![]({b.image})", *(v for _, v in a.fields), a.label, b.label)
        for a, b in t.items
    )
    return _table(Table(tuple(Column(c) for c in columns), rows), figs)


def _preformatted(b: Preformatted, _: Figures) -> list[str]:
    fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", b.text)), default=0))
    # collapsed where Markdown is rendered (as on GitHub), two short tag lines in a terminal
    return [
        f"<details><summary>{_text(b.summary)}</summary>",
        "",
        fence,
        b.text,
        fence,
        "",
        "</details>",
    ]


RENDER: dict[type, Callable[[Any, Figures], list[str]]] = {
    Paragraph: lambda b, _: [_inline(b.text)],
    Note: lambda b, _: [f"_{_text(b.text)}_"],
    Subheading: lambda b, _: [f"### {_text(b.text)}"],
    Facts: lambda b, _: [f"- **{_text(k)}**: {_inline(v)}" for k, v in b.items],
    Table: _table,
    Figure: lambda b, figs: (
        [f"![{_text(b.alt)}]({REPORT_FILES}/{b.name})"] if b.name in figs else []
    ),
    Thumbnails: _thumbnails,
    ThumbPairs: _pairs,
    Preformatted: _preformatted,
}


def markdown_page(doc: Document, figs: Figures) -> str:
    """The document as Markdown; a figure is referenced only when it was drawn."""
    out = [f"# {_text(doc.title)}", "", f"_{_text(doc.subtitle)}_"]
    for number, section in enumerate(doc.sections, 1):
        out += ["", f"## {number}. {_text(section.title)}"]
        for block in section.blocks:
            lines = RENDER[type(block)](block, figs)
            if lines:
                out += ["", *lines]
    return "\n".join(out) + "\n"


def render_markdown(
    record: dict[str, Any], figs: Figures, sections: Sequence[SectionFn] = SECTIONS
) -> str:
    """``report.md``: the record's sections, plots as ``report_files/*.png`` next to it."""
    return markdown_page(build_document(record, sections), figs)
