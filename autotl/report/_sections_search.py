"""How the search got there: the learning curves, the search and the engines compared sections."""

from __future__ import annotations

from typing import Any, Optional

from autotl.report._common import ACCURACY, _ci, _fmt_seconds, _score, objectives_of
from autotl.report._document import (
    Column,
    Figure,
    Fragment,
    Note,
    Paragraph,
    Section,
    Subheading,
    table,
)

CURVES_NOTE = (
    "Phase 1 trains the head on the frozen base; the shaded part after the dashed line is phase 2 "
    "(fine-tuning). The dotted line marks the epoch where the head's validation loss was best."
)

# -- learning curves


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


# -- the search


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
    blocks: list[Fragment] = [Figure("history.png", "optimisation history")]
    if search.get("depth"):
        low = (search.get("ranges") or {}).get("unfreeze_blocks", [0])[0] or 0
        blocks.append(Note(_depth_note(search["depth"], low)))
    blocks.append(Subheading("Parameter importances"))
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


def _depth_note(depth: dict[str, Any], low: int) -> str:
    """The widening of ``unfreeze_blocks``, in a sentence or two."""
    probes = ", ".join(str(p) for p in depth.get("probes") or [])
    text = (
        f"Fine-tuning depth widened from {low}..{depth['from']} to {low}..{depth['high']} blocks after trial "
        f"{depth['after_trial']}: {depth['reason']}"
        + (f"; probed at {probes} blocks." if probes else ".")
    )
    stop = depth.get("stop")
    if stop:
        text += (
            f" The search stopped after {stop['trials']} trials at its time bound (deepen.cost): "
            f"{stop['spent_seconds']:.0f} s of trials, the next reckoned at {stop['next_seconds']:.0f} s, "
            f"against a bound of {stop['bound_seconds']:.0f} s."
        )
    return text


# -- engines compared


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
    headers: list[Column | str] = ["engine", "study"]
    headers += [Column(h, True) for h in ("trials", "complete", "failed")]
    headers += [
        Column(h, True) for h in (f"best {o['short']}", ci, "mean", "median", "time in trials")
    ]
    blocks: list[Fragment] = [
        table(headers, [_engine_row(o, s) for s in engines["studies"]]),
        Figure("engines.png", "optimisation history by engine"),
        Note(engines["note"]),
    ]
    return Section("engines", "Engines compared", tuple(blocks))


# -- backbone screening

SCREENING_NOTE = (
    "Every backbone was cached on a stratified sample and scored there: the validation accuracy of "
    "phase-1 heads fitted on the sample (with its interval) and LogME, a training-free estimate of how "
    "well the features suit the labels (You et al., ICML 2021). Only the backbones kept went on to a full "
    "feature cache; the images/s measured on the sample estimated each full cache's time before it was built."
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "kept":
        return "yes" if value else "no"
    if key in ("full_cache_seconds",):
        return _fmt_seconds(value)
    if isinstance(value, float):
        return f"{value:,.1f}" if key == "images_per_second" else f"{value:.3f}"
    return str(value)


def backbone_screening(record: dict[str, Any]) -> Optional[Section]:
    """Each backbone's sample scores and cost, whether it went on to all the data and why, and its best there."""
    screening = record.get("backbone_screening")
    if not screening:
        return None
    if "skipped" in screening:
        return Section("screening", "Backbone screening", (Note(screening["skipped"]),))
    columns = screening["columns"]
    text = ("backbone", "reason", "kept")
    headers = [Column(label, key not in text) for key, label in columns.items()]
    rows = [[_cell(k, r.get(k)) for k in columns] for r in screening["rows"]]
    rule = screening.get("rule") or {}
    facts = (
        f"sample: {screening.get('sample_images')} images; rule: {rule.get('rule')} "
        f"(signal {rule.get('signal')}, keep at most {rule.get('keep')}, confidence {rule.get('confidence')})"
    )
    return Section(
        "screening",
        "Backbone screening",
        (Paragraph(facts), table(headers, rows), Note(SCREENING_NOTE)),
    )
