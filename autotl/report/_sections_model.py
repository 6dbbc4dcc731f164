"""Where the best model comes from: the best model evaluated and the lineage sections."""

from __future__ import annotations

import json
from typing import Any, Optional

from autotl.report._common import _ci, _fmt
from autotl.report._document import (
    Code,
    Column,
    Facts,
    Figure,
    Fragment,
    Inline,
    Note,
    Paragraph,
    Preformatted,
    Section,
    Strong,
    Subheading,
    Thumb,
    Thumbnails,
    table,
)

# -- the best model evaluated


def _misclassified(ev: dict[str, Any]) -> list[Fragment]:
    if not ev["misclassified"]:
        return []
    shown, total = len(ev["misclassified"]), ev["misclassified_total"]
    thumbs = Thumbnails(
        tuple(
            Thumb(
                m["thumbnail"],
                m["file"],
                (
                    ("true", m["true"]),
                    ("predicted", m["predicted"]),
                    ("confidence", f"{m['confidence']:.2f}"),
                ),
            )
            for m in ev["misclassified"]
        )
    )
    return [Subheading(f"Misclassified images ({shown} of {total}, most confident first)"), thumbs]


def evaluation(record: dict[str, Any]) -> Optional[Section]:
    """The best model file scored again on the validation split: confusion, per class, mistakes."""
    ev = record.get("evaluation")
    if ev is None:
        return None
    title = "Best model on the validation set"
    if ev.get("skipped"):
        return Section("evaluation", title, (Note(f"skipped: {ev['skipped']}"),))
    which = f"trial {ev['model_trial']}" if ev.get("model_trial") is not None else "trial unknown"
    ci = f" (95% CI {_ci(ev['ci95'])})" if ev["ci95"] else ""
    names = ev["class_names"]
    blocks: list[Fragment] = [
        Paragraph(
            (
                Code(ev["model"]),
                f" ({which}) on {ev['images']} validation images: accuracy ",
                Strong(_fmt(ev["accuracy"], ".4f")),
                f"{ci}, {ev['misclassified_total']} misclassified.",
            )
        ),
        Figure("confusion.png", "confusion matrix"),
        Paragraph("Confusion matrix (rows: true, columns: predicted):"),
        table(
            ["true \\ predicted", *(Column(n, True) for n in names)],
            [[names[i], *row] for i, row in enumerate(ev["confusion_matrix"])],
        ),
        table(
            ["class", *(Column(h, True) for h in ("precision", "recall", "f1", "support"))],
            [
                [
                    p["class"],
                    f"{p['precision']:.3f}",
                    f"{p['recall']:.3f}",
                    f"{p['f1']:.3f}",
                    p["support"],
                ]
                for p in ev["per_class"]
            ],
        ),
        *_misclassified(ev),
    ]
    return Section("evaluation", title, tuple(blocks))


# -- lineage


def _versions(versions: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def _lineage_facts(lin: dict[str, Any]) -> list[tuple[str, Inline]]:
    facts: list[tuple[str, Inline]] = [
        ("autotl", lin["autotl_version"]),
        ("plugins", "; ".join(f"{k}: {v}" for k, v in lin["plugins"].items()) or "-"),
        ("data fingerprint", lin["data_fingerprint"] or "-"),
        ("data source", lin["data_source"] or "-"),
        ("seeds", ", ".join(f"{k} {v}" for k, v in lin["seeds"].items())),
        ("weights", str(lin.get("weights") or "-")),
        ("libraries (report)", _versions(lin["library_versions"])),
    ]
    if lin.get("library_versions_at_search"):
        facts.append(("libraries (search)", _versions(lin["library_versions_at_search"])))
    facts.append(("command", Code(lin["command"]) if lin["command"] else "- (not recorded)"))
    if lin.get("run_created"):
        facts.append(("run created", lin["run_created"]))
    return facts


def lineage(record: dict[str, Any]) -> Optional[Section]:
    """What made the results: versions, plugins, weights, data, seeds, command, recorded files."""
    lin = record.get("lineage")
    if not lin:
        return None
    blocks: list[Fragment] = [
        Facts(tuple(_lineage_facts(lin))),
        Subheading("Weights per trial"),
        table(
            [Column("trial", True), "backbone", "plugin", "weights", "weights sha256"],
            [
                [
                    t["number"],
                    *(
                        _fmt(t[k])
                        for k in ("backbone", "plugin", "weights_origin", "weights_sha256")
                    ),
                ]
                for t in lin["trials"]
            ],
        ),
    ]
    if lin["recorded_models"]:
        blocks.append(Subheading("Recorded model files"))
        blocks.append(
            table(
                [Column("id", True), "kind", Column("trial", True), "sha256", "path", "created"],
                [
                    [
                        m["artifact_id"],
                        m["kind"],
                        _fmt(m["trial_number"]),
                        (m["sha256"] or "")[:16],
                        m["path"],
                        _fmt(m["created"]),
                    ]
                    for m in lin["recorded_models"]
                ],
            )
        )
    if lin.get("space"):
        blocks.append(Preformatted("search space", json.dumps(lin["space"], indent=2)))
    return Section("lineage", "Lineage", tuple(blocks))
