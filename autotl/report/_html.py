"""The HTML backend: one self-contained page (inline CSS, inline PNG, no script, no network)."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from typing import Any

from autotl.report._document import (
    Code,
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
    Thumb,
    Thumbnails,
    ThumbPairs,
    build_document,
)
from autotl.report._sections import SECTIONS

# the page may load nothing from anywhere: only its own inline style and data: images
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1b1f24;background:#fafbfc}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.5em;margin:.4em 0 .1em}h2{font-size:1.2em;border-bottom:2px solid #d0d7de;padding-bottom:4px;margin-top:1.8em}
h3{font-size:1em;margin:1.2em 0 .4em}
.sub{color:#57606a;margin:0 0 1em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0;background:#fff;max-width:100%}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f0f3f6}th.num{text-align:right}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td{background:#e6f4ea;font-weight:600}
tr.failed td{color:#8c1d18}tr.running td{color:#0550ae;font-style:italic}tr.pruned td{color:#6e7781}
dl.facts{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:4px 16px;margin:.5em 0}
dl.facts dt{font-weight:600;color:#57606a}dl.facts dd{margin:0;overflow-wrap:anywhere}
img.plot{max-width:100%;height:auto;border:1px solid #d0d7de;background:#fff;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure.thumb{margin:0;padding:4px;border:1px solid #d0d7de;background:#fff;width:92px;text-align:center;font-size:11px}
figure.thumb img{width:64px;height:64px;object-fit:contain;image-rendering:pixelated}
.pair{display:flex;gap:2px;padding:2px;border:1px solid #8c959f;background:#eaeef2}
.pair figure.thumb{width:120px}
.note{color:#57606a;font-style:italic}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
"""

Images = dict[str, bytes]


def _h(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _inline(text: Inline) -> str:
    if isinstance(text, tuple):
        return "".join(_inline(t) for t in text)
    if isinstance(text, Strong):
        return f"<b>{_h(text.text)}</b>"
    if isinstance(text, Code):
        return f"<code>{_h(text.text)}</code>"
    return _h(text)


def _img(images: Images, name: str, alt: str, cls: str) -> str:
    """An inline PNG, or nothing when that picture was not drawn."""
    if name not in images:
        return ""
    data = base64.b64encode(images[name]).decode("ascii")
    return f'<img class="{cls}" alt="{_h(alt)}" src="data:image/png;base64,{data}">'


def _table(t: Table, images: Images) -> str:
    num = [' class="num"' if c.numeric else "" for c in t.columns]
    out = ["<table><thead><tr>"]
    out += [f"<th{n}>{_h(c.header)}</th>" for c, n in zip(t.columns, num)]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(t.rows):
        cls = t.row_classes[i] if i < len(t.row_classes) else ""
        out.append(f'<tr class="{_h(cls)}">' if cls else "<tr>")
        out += [f"<td{n}>{_h(cell)}</td>" for cell, n in zip(row, num)]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _thumb(m: Thumb, images: Images) -> str:
    caption = "<br>".join(f"{_h(k)} <b>{_h(v)}</b>" for k, v in m.fields)
    image = _img(images, m.image.rsplit("/", 1)[-1], m.label, "")
    return (
        f'<figure class="thumb" title="{_h(m.label)}">{image}'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _thumbnails(t: Thumbnails, images: Images) -> str:
    return '<div class="grid">' + "".join(_thumb(m, images) for m in t.items) + "</div>"


def _pairs(t: ThumbPairs, images: Images) -> str:
    pairs = (f'<div class="pair">{_thumb(a, images)}{_thumb(b, images)}</div>' for a, b in t.items)
    return '<div class="grid">' + "".join(pairs) + "</div>"


RENDER: dict[type, Callable[[Any, Images], str]] = {
    Paragraph: lambda b, _: f"<p>{_inline(b.text)}</p>",
    Note: lambda b, _: f'<p class="note">{_h(b.text)}</p>',
    Subheading: lambda b, _: f"<h3>{_h(b.text)}</h3>",
    Facts: lambda b, _: (
        '<dl class="facts">'
        + "".join(f"<dt>{_h(k)}</dt><dd>{_inline(v)}</dd>" for k, v in b.items)
        + "</dl>"
    ),
    Table: _table,
    Figure: lambda b, images: _img(images, b.name, b.alt, "plot"),
    Thumbnails: _thumbnails,
    ThumbPairs: _pairs,
    Preformatted: lambda b, _: (
        f"<details><summary>{_h(b.summary)}</summary><pre>{_h(b.text)}</pre></details>"
    ),
}


def html_page(doc: Document, images: Images) -> str:
    """The document as one HTML page; ``images`` holds every figure and thumbnail by file name."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(doc.title)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{_h(doc.title)}</h1>",
        f'<p class="sub">{_h(doc.subtitle)}</p>',
    ]
    for number, section in enumerate(doc.sections, 1):
        out.append(f'<h2 id="{_h(section.anchor)}">{number}. {_h(section.title)}</h2>')
        out += filter(None, (RENDER[type(b)](b, images) for b in section.blocks))
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def render_html(
    record: dict[str, Any],
    figs: Images,
    thumbs: Images,
    sections: Sequence[SectionFn] = SECTIONS,
) -> str:
    """``report.html``: the record's sections with every plot and thumbnail inline."""
    return html_page(build_document(record, sections), {**figs, **thumbs})
