"""The report as a neutral document: sections of fragments that any backend can render.

A section function reads the record (``report.json``'s dict) and returns a
:class:`Section` of fragments, or ``None`` when the record has nothing for it;
the HTML and Markdown backends each render every fragment type once.  Nothing
here knows HTML or Markdown, and every string in a fragment is plain text:
escaping is the backend's job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union


@dataclass(frozen=True)
class Strong:
    """Text to stress (the headline number of a paragraph)."""

    text: str


@dataclass(frozen=True)
class Code:
    """Text to show verbatim (a path, a command)."""

    text: str


#: Running text: plain strings, stressed or verbatim pieces, or a sequence of them.
Inline = Union[str, Strong, Code, tuple["Inline", ...]]


@dataclass(frozen=True)
class Paragraph:
    text: Inline


@dataclass(frozen=True)
class Note:
    """An aside that explains how to read what is around it."""

    text: str


@dataclass(frozen=True)
class Subheading:
    text: str


@dataclass(frozen=True)
class Facts:
    """Key/value pairs, read top to bottom."""

    items: tuple[tuple[str, Inline], ...]


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False  # right-aligned, tabular figures


@dataclass(frozen=True)
class Table:
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]
    row_classes: tuple[str, ...] = ()  # per row: "best", "failed", ... (a backend may ignore them)


@dataclass(frozen=True)
class Figure:
    """A plot by its file name in the figures; a backend leaves out a figure that was not drawn."""

    name: str
    alt: str


@dataclass(frozen=True)
class Thumb:
    image: str  # the record's path of the thumbnail, ``report_files/<name>.png``
    label: str  # where the image came from
    fields: tuple[tuple[str, str], ...]  # ("true", "ants"), ...


@dataclass(frozen=True)
class Thumbnails:
    items: tuple[Thumb, ...]


@dataclass(frozen=True)
class ThumbPairs:
    """Pairs of thumbnails side by side: a file next to its twin (a duplicate, a leaked copy)."""

    items: tuple[tuple[Thumb, Thumb], ...]


@dataclass(frozen=True)
class Preformatted:
    """Long verbatim text behind a summary line (the search space)."""

    summary: str
    text: str


Fragment = Union[
    Paragraph, Note, Subheading, Facts, Table, Figure, Thumbnails, ThumbPairs, Preformatted
]


@dataclass(frozen=True)
class Section:
    anchor: str  # the HTML id, stable across reports
    title: str
    blocks: tuple[Fragment, ...]


@dataclass(frozen=True)
class Document:
    title: str
    subtitle: str
    sections: tuple[Section, ...]  # numbered from 1 in this order


SectionFn = Callable[[dict[str, Any]], Optional[Section]]


def table(
    columns: Sequence[Column | str],
    rows: Sequence[Sequence[Any]],
    row_classes: Sequence[str] = (),
) -> Table:
    """A :class:`Table` from columns (a bare string is a text column) and rows of any values."""
    cols = tuple(c if isinstance(c, Column) else Column(c) for c in columns)
    cells = tuple(tuple("" if v is None else str(v) for v in row) for row in rows)
    return Table(cols, cells, tuple(row_classes))


def build_document(record: dict[str, Any], sections: Sequence[SectionFn]) -> Document:
    """The record's sections, in order, numbered from 1; a section with nothing to say is left out."""
    summary = record.get("summary") or {}
    source = (summary.get("data") or {}).get("source")
    name = source or summary.get("study_name") or record.get("run_dir") or "run"
    built = tuple(s for s in (fn(record) for fn in sections) if s is not None)
    return Document(
        title=f"autotl report: {name}",
        subtitle=f"generated {record.get('generated', '-')} from {record.get('run_dir', '-')}",
        sections=built,
    )
