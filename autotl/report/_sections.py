"""The report's sections, in order: each reads the record and returns a :class:`Section` (or ``None``).

Adding a section is one function here and one entry in :data:`SECTIONS`; both
renderings pick it up.  Scores are shown by the study's objectives (the
record's ``objectives``: label, short label, direction, format), never by a
hard-coded metric; the one exception is the Wilson interval, which is about
accuracy (a proportion of images) whatever the objective is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Optional

from autotl.objective import TIE_BREAK
from autotl.report._common import ACCURACY, _epoch1, _fmt, _fmt_seconds, _score, objectives_of
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
    SectionFn,
    Strong,
    Subheading,
    Thumb,
    Thumbnails,
    table,
)

CURVES_NOTE = (
    "Phase 1 trains the head on the frozen base; the shaded part after the dashed line is phase 2 "
    "(fine-tuning). The dotted line marks the epoch where the head's validation loss was best."
)
EPOCHS_NOTE = (
    "Epochs are counted from 1; 'head stable' is the phase-1 epoch with the head's best validation "
    "loss ('-' when it never plateaued, so phase 2 did not run); 'epochs p1/p2' are the epochs each "
    "phase ran."
)


def _ci(ci: Optional[list[float]]) -> str:
    return f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else "-"


def _shown_metrics(record: dict[str, Any]) -> set[str]:
    return {o["metric"] for o in objectives_of(record)}


# -- 1. summary ---------------------------------------------------------------------------------


def _best_scores(record: dict[str, Any], best: dict[str, Any]) -> str:
    """Each objective's value (accuracy with its interval), then the validation loss that breaks ties."""
    ci = best.get("ci95")
    ci_text = f" (95% CI {_ci(ci)}; {best['ci_method']})" if ci else f" ({best['ci_method']})"
    values = best.get("values") or {}
    parts = [
        f"{o['label']} {_score(o, values.get(o['name']))}"
        + (ci_text if o["metric"] == ACCURACY else "")
        for o in objectives_of(record)
    ]
    shown = _shown_metrics(record)
    if ACCURACY not in shown and best.get("val_accuracy") is not None:
        parts.append(f"val accuracy {best['val_accuracy']:.4f}{ci_text}")
    if TIE_BREAK not in shown:
        parts.append(f"val loss {_fmt(best.get('val_loss'), '.4f')}")
    return ", ".join(parts)


def _best_facts(record: dict[str, Any], best: Optional[dict[str, Any]]) -> list[tuple[str, Inline]]:
    if not best:
        return [("best trial", "none: no trial has completed yet")]
    settings = ", ".join(
        f"{k}={_fmt(v, '.3g') if isinstance(v, float) else v}"
        for k, v in sorted(best["params"].items())
    )
    return [
        ("best trial", f"trial {best['number']}: {_best_scores(record, best)}"),
        (
            "best settings",
            f"{settings}; head stable at epoch {_fmt(_epoch1(best['head_stable_epoch']))}, "
            f"{_fmt(best['epochs_phase1'])} + {_fmt(best['epochs_phase2'])} epochs, "
            f"fine-tuning: {best['gate'] or '-'}",
        ),
    ]


def _run_facts(record: dict[str, Any], s: dict[str, Any]) -> list[tuple[str, Inline]]:
    d = s["data"]
    engine = record.get("engine", "optuna")
    objectives = objectives_of(record)
    facts: list[tuple[str, Inline]] = [
        (
            "study",
            f"{s['study_name']}"
            + (f" ({engine} engine)" if engine != "optuna" else "")
            + f" in {record.get('storage', '-')}",
        ),
        ("objective", ", ".join(f"{o['label']} ({o['direction']})" for o in objectives)),
        ("sampler", record.get("sampler") or "-"),
        ("data", f"{d['source'] or 'unknown'}" + (f" ({d['split']})" if d.get("split") else "")),
        (
            "classes",
            f"{len(d['class_names'])}: {', '.join(d['class_names'])}"
            if d["class_names"]
            else "unknown",
        ),
        (
            "images",
            f"{_fmt(d['train_images'])} train / {_fmt(d['val_images'])} val"
            + (f", {d['skipped']} file(s) skipped" if d.get("skipped") else ""),
        ),
        ("trials", ", ".join(f"{n} {k}" for k, n in sorted(s["states"].items())) or "none yet"),
        (
            "time",
            f"{_fmt_seconds(s['seconds_in_trials'])} in trials, "
            f"{_fmt_seconds(s['seconds_wall'])} from first start to last finish",
        ),
    ]
    if record.get("engines"):
        o = objectives[0]
        facts.append(
            (
                "engines",
                "; ".join(
                    f"{e['engine']}: best {_score(o, ((e['best'] or {}).get('values') or {}).get(o['name']))}"
                    f" in {e['complete']} complete trials"
                    for e in record["engines"]["studies"]
                )
                + " (compared below)",
            )
        )
    return facts


def summary(record: dict[str, Any]) -> Optional[Section]:
    """The best trial, its settings, the study, the data and the time it took."""
    s = record.get("summary")
    if not s:
        return None
    facts = [*_best_facts(record, s.get("best")), *_run_facts(record, s)]
    blocks: list[Fragment] = [Facts(tuple(facts))]
    counts = s["data"].get("counts") or {}
    if s["data"]["class_names"]:
        blocks.append(
            table(
                ["class", Column("train", True), Column("val", True)],
                [
                    [
                        c,
                        _fmt((counts.get("train") or {}).get(c)),
                        _fmt((counts.get("val") or {}).get(c)),
                    ]
                    for c in s["data"]["class_names"]
                ],
            )
        )
    return Section("summary", "Summary", tuple(blocks))


# -- 2. leaderboard -----------------------------------------------------------------------------

Cell = Callable[[dict[str, Any]], str]


def leaderboard_columns(record: dict[str, Any]) -> list[tuple[Column, Cell]]:
    """The leaderboard's columns: the trial's settings, one score column per objective, then the rest."""
    columns: list[tuple[Column, Cell]] = [
        (Column("trial", True), lambda r: str(r["number"])),
        (Column("state"), lambda r: r["state"]),
        (Column("backbone"), lambda r: _fmt(r["backbone"])),
        (Column("head", True), lambda r: _fmt(r["head_width"])),
        (Column("dropout", True), lambda r: _fmt(r["dropout"], ".2f")),
        (Column("unfreeze", True), lambda r: _fmt(r["unfreeze_blocks"])),
        (Column("fine-tune lr", True), lambda r: _fmt(r["finetune_lr"], ".1e")),
        (Column("head stable", True), lambda r: _fmt(_epoch1(r["head_stable_epoch"]))),
        (Column("epochs p1", True), lambda r: _fmt(r["epochs_phase1"])),
        (Column("epochs p2", True), lambda r: _fmt(r["epochs_phase2"])),
    ]
    for o in objectives_of(record):
        columns.append(
            (Column(o["short"], True), lambda r, o=o: _score(o, r["values"].get(o["name"])))
        )
    if TIE_BREAK not in _shown_metrics(record):
        columns.append(
            (Column("val loss", True), lambda r: _fmt(r["metrics"].get(TIE_BREAK), ".4f"))
        )
    columns += [
        (Column("time", True), lambda r: _fmt_seconds(r["seconds"])),
        (Column("note"), lambda r: r["note"] or ""),
    ]
    return columns


def _order_note(record: dict[str, Any]) -> str:
    by = ", then ".join(
        f"{o['label']} ({'higher' if o['direction'] == 'maximize' else 'lower'} is better)"
        for o in objectives_of(record)
    )
    return (
        f"Best first: complete trials, then pruned, running, waiting and failed ones, each by {by}; "
        "ties go to the lower validation loss, then the earlier trial. "
    )


def leaderboard(record: dict[str, Any]) -> Optional[Section]:
    """Every trial, best first, with what it tried and how it ended."""
    rows = record.get("leaderboard")
    if rows is None:
        return None
    best_no = ((record.get("summary") or {}).get("best") or {}).get("number")
    columns = leaderboard_columns(record)
    grid = table(
        [c for c, _ in columns],
        [[cell(r) for _, cell in columns] for r in rows],
        ["best" if r["number"] == best_no else r["state"] for r in rows],
    )
    return Section("leaderboard", "Leaderboard", (grid, Note(_order_note(record) + EPOCHS_NOTE)))


# -- 3. learning curves -------------------------------------------------------------------------


def learning_curves(record: dict[str, Any]) -> Optional[Section]:
    """Both phases of the best trials, with the phase boundary marked."""
    curves = record.get("curves")
    if curves is None:
        return None
    if not curves:
        return Section(
            "curves", "Learning curves", (Note("no complete trial has learning curves yet"),)
        )
    blocks: list[Fragment] = [
        Note(CURVES_NOTE),
        Figure("curves_best.png", "validation curves of the best trials"),
    ]
    for c in curves:
        n = c["number"]
        blocks += [Subheading(f"Trial {n}"), Figure(f"curve_trial_{n:04d}.png", f"trial {n}")]
    return Section("curves", "Learning curves", tuple(blocks))


# -- 4. the search ------------------------------------------------------------------------------


def _by_backbone(record: dict[str, Any], by: dict[str, Any]) -> list[Fragment]:
    o = objectives_of(record)[0]
    title = (
        f"{o['label'][:1].upper()}{o['label'][1:]} by backbone, unfreeze depth and fine-tune rate"
    )
    grid = table(
        [
            "backbone",
            Column("complete trials", True),
            Column(f"mean {o['short']}", True),
            Column(f"best {o['short']}", True),
        ],
        [
            [k, str(v["n"]), _score(o, v["mean"]), _score(o, v.get("best", v["max"]))]
            for k, v in sorted(by.items())
        ],
    )
    return [Subheading(title), grid, Figure("params.png", title.lower())]


def the_search(record: dict[str, Any]) -> Optional[Section]:
    """How the search went: its history, what mattered, and the score by setting."""
    search = record.get("search")
    if not search:
        return None
    blocks: list[Fragment] = [
        Figure("history.png", "optimisation history"),
        Subheading("Parameter importances"),
    ]
    imp = search.get("importances") or {}
    if imp.get("values"):
        blocks.append(
            table(
                ["parameter", Column("importance", True)],
                [[k, f"{v:.3f}"] for k, v in imp["values"].items()],
            )
        )
        blocks.append(Figure("importances.png", "parameter importances"))
    if imp.get("note"):
        blocks.append(Note(imp["note"]))
    if search.get("by_backbone"):
        blocks += _by_backbone(record, search["by_backbone"])
    return Section("search", "The search", tuple(blocks))


# -- 5. the best model evaluated ----------------------------------------------------------------


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


# -- 6. lineage ---------------------------------------------------------------------------------


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


# -- 7. engines compared ------------------------------------------------------------------------


def _engine_row(o: dict[str, Any], s: dict[str, Any]) -> list[str]:
    best = s["best"] or {}
    value = (best.get("values") or {}).get(o["name"])
    return [
        f"{s['engine']}" + (f" ({s['tuner']})" if s.get("tuner") else ""),
        s["study_name"] + (" (this report)" if s["reported"] else ""),
        str(s["trials"]),
        str(s["complete"]),
        str(s["failed"]),
        f"{_score(o, value)} (trial {best['number']})" if best else "-",
        _ci(best.get("ci95")),
        _score(o, (s.get("mean") or {}).get(o["name"])),
        _score(o, (s.get("median") or {}).get(o["name"])),
        _fmt_seconds(s["seconds_in_trials"]),
    ]


def engines_compared(record: dict[str, Any]) -> Optional[Section]:
    """The Optuna and keras-tuner studies of one run, side by side (only when both exist)."""
    engines = record.get("engines")
    if not engines:
        return None
    o = objectives_of(record)[0]
    ci = "95% CI" if o["metric"] == ACCURACY else "accuracy 95% CI"
    headers = ["engine", "study", *(Column(h, True) for h in ("trials", "complete", "failed"))]
    headers += [
        Column(h, True) for h in (f"best {o['short']}", ci, "mean", "median", "time in trials")
    ]
    blocks: list[Fragment] = [
        table(headers, [_engine_row(o, s) for s in engines["studies"]]),
        Figure("engines.png", "optimisation history by engine"),
        Note(engines["note"]),
    ]
    return Section("engines", "Engines compared", tuple(blocks))


#: The report, in order.  Sections with nothing to say are left out and the rest numbered from 1.
SECTIONS: list[SectionFn] = [
    summary,
    leaderboard,
    learning_curves,
    the_search,
    evaluation,
    lineage,
    engines_compared,
]
