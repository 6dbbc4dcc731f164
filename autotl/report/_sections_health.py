"""The data-health section: counts per kind, leakage and what it does to the score, the top findings as pictures."""

from __future__ import annotations

from typing import Any, Optional

from autotl.report._common import _ci, _fmt, _fmt_seconds
from autotl.report._document import (
    Code,
    Column,
    Fragment,
    Note,
    Paragraph,
    Section,
    Strong,
    Subheading,
    Thumb,
    Thumbnails,
    ThumbPairs,
    table,
)

#: What each kind means, in the report's words.
MEANING = {
    "leakage": "the same picture (exact or near copy) in two splits: validation scores are inflated",
    "exact_duplicate": "the same bytes twice in one split",
    "near_duplicate": "a re-encoded, resized or cropped copy in the same split",
    "label_issue": "the label is likely wrong (cleanlab, out-of-fold heads)",
    "outlier": "far from every other image (cleanlab's out-of-distribution score)",
    "unreadable": "does not decode: never used",
    "tiny": "far smaller than the typical picture",
    "odd_mode": "a file format or colour mode few others have",
}


def _fields(row: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    kind = row["kind"]
    if kind == "label_issue":
        return (
            ("given", row["label"]),
            ("suggested", row["suggested"]),
            ("score", f"{row['score']:.2f}"),
        )
    if kind in ("leakage", "exact_duplicate", "near_duplicate"):
        return ((row["split"], row["detail"]),)
    return (("class", row["label"] or "-"), ("", row["detail"]))


def _pictures(kind: str, rows: list[dict[str, Any]]) -> Fragment:
    if kind in ("leakage", "exact_duplicate", "near_duplicate"):
        return ThumbPairs(
            tuple(
                (
                    Thumb(r["thumbnail"] or "", r["path"], _fields(r)),
                    Thumb(r["other_thumbnail"] or "", r["other"], ((r["other_split"], "kept"),)),
                )
                for r in rows
            )
        )
    if kind == "unreadable":
        return table(["file", "reason"], [[r["path"], r["detail"]] for r in rows])
    return Thumbnails(tuple(Thumb(r["thumbnail"] or "", r["path"], _fields(r)) for r in rows))


def _scores(record: dict[str, Any]) -> list[Fragment]:
    """The best model's validation accuracy with and without the leaked validation images."""
    ev = record.get("evaluation") or {}
    clean = ev.get("without_leaked")
    if not clean:
        return []
    return [
        Paragraph(
            (
                "The best model's validation accuracy is ",
                Strong(_fmt(ev.get("accuracy"), ".4f")),
                f" on all {ev.get('images')} validation images (95% CI {_ci(ev.get('ci95'))}) and ",
                Strong(_fmt(clean["accuracy"], ".4f")),
                f" on the {clean['images']} without the {clean['leaked']} leaked ones "
                f"(95% CI {_ci(clean['ci95'])}).",
            )
        )
    ]


def data_health(record: dict[str, Any]) -> Optional[Section]:
    """Section "Data health": what ``autotl doctor`` found in the search's data."""
    health = record.get("health")
    if health is None:
        return None
    title = "Data health"
    if health.get("skipped"):
        return Section("health", title, (Note(health["skipped"]),))
    images = health["images"]
    seconds = health.get("seconds") or {}
    blocks: list[Fragment] = [
        Paragraph(
            f"{sum(images.values())} images ({', '.join(f'{n} {s}' for s, n in images.items())}) "
            f"checked with {health['backbone']}'s pooled features in {_fmt_seconds(seconds.get('total'))}."
        ),
        table(
            ["kind", Column("found", True), "meaning"],
            [[k, n, MEANING.get(k, "")] for k, n in health["counts"].items()],
        ),
        # what the check left out (near duplicates and outliers past the neighbour limit, say)
        *(Note(n[:1].upper() + n[1:] + ".") for n in health.get("notes") or []),
    ]
    if health["leakage_by_splits"]:
        pairs = ", ".join(f"{s}: {n}" for s, n in health["leakage_by_splits"].items())
        blocks.append(Paragraph((Strong("Leakage"), f" between splits ({pairs}).")))
    blocks += _scores(record)
    for kind, rows in health["top"].items():
        total = health["counts"].get(kind, len(rows))
        blocks += [
            Subheading(f"{kind} ({len(rows)} of {total}, surest first)"),
            _pictures(kind, rows),
        ]
    blocks.append(
        Paragraph(
            (
                "Every finding is a row of ",
                Code("health/issues.csv"),
                "; ",
                Code("autotl search DATA --exclude issues.csv"),
                " trains without the files it lists (keep the rows you agree with). The data folder is never changed.",
            )
        )
    )
    return Section("health", title, tuple(blocks))
