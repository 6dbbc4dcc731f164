"""What a search found: the summary and the leaderboard sections.

Scores are shown by the study's objectives (the record's ``objectives``: label,
short label, direction, format), never by a hard-coded metric; the one
exception is the Wilson interval, which is about accuracy (a proportion of
images) whatever the objective is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from autotl.report._common import (
    ACCURACY,
    _ci,
    _epoch1,
    _fmt,
    _fmt_seconds,
    _score,
    objectives_of,
    shown_metrics,
)
from autotl.report._document import (
    Column,
    Facts,
    Figure,
    Fragment,
    Inline,
    Note,
    Section,
    table,
)
from autotl.scoring.objective import TIE_BREAK

EPOCHS_NOTE = (
    "Epochs are counted from 1; 'head stable' is the phase-1 epoch with the head's best validation "
    "loss ('-' when it never plateaued, so phase 2 did not run); 'epochs p1/p2' are the epochs each "
    "phase ran."
)


# -- summary


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
    shown = shown_metrics(record)
    if ACCURACY not in shown and best.get("val_accuracy") is not None:
        parts.append(f"val accuracy {best['val_accuracy']:.4f}{ci_text}")
    if TIE_BREAK not in shown:
        parts.append(f"val loss {_fmt(best.get('val_loss'), '.4f')}")
    return ", ".join(parts)


def _test_fact(record: dict[str, Any], best: dict[str, Any]) -> str:
    """The chosen model's test score, measured once on images the search never saw, beside its validation score."""
    ev = record.get("evaluation") or {}
    test = ev.get("test") or {}
    if ev.get("skipped") or not test:
        return f"not measured: {ev.get('skipped') or 'the best model was not evaluated'}"
    if test.get("skipped"):
        return test["skipped"]
    others = [
        f"{o['label'].replace('validation ', 'test ')} {_score(o, test.get(o['name']))}"
        for o in objectives_of(record)
        if o["name"] in ("balanced_accuracy", "macro_f1", "log_loss")
    ]
    trial = ev.get("model_trial")
    which = f"trial {trial}" if trial is not None else "the best model"
    return (
        f"{which}: test accuracy {test['accuracy']:.4f} ({test['correct']}/{test['images']}, 95% CI "
        f"{_ci(test['ci95'])}; {test['split']})"
        + "".join(f", {x}" for x in others)
        + f", next to validation accuracy {_fmt(best.get('val_accuracy'), '.4f')}; measured once, "
        "after the search" + (f" ({test['note']})" if test.get("note") else "")
    )


def _best_facts(record: dict[str, Any], best: Optional[dict[str, Any]]) -> list[tuple[str, Inline]]:
    if not best:
        constraints = record.get("constraints") or []
        if constraints and any(r["state"] == "complete" for r in record.get("leaderboard") or []):
            return [("best trial", f"none: no complete trial meets {', '.join(constraints)}")]
        return [("best trial", "none: no trial has completed yet")]
    settings = ", ".join(
        f"{k}={_fmt(v, '.3g') if isinstance(v, float) else v}"
        for k, v in sorted(best["params"].items())
    )
    return [
        ("best trial", f"trial {best['number']}: {_best_scores(record, best)}"),
        ("test score", _test_fact(record, best)),
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
    if s.get("skipped_backbones"):  # why a backbone was left out (its checks, weights, or failures)
        facts.append(
            ("skipped backbones", "; ".join(f"{k}: {v}" for k, v in s["skipped_backbones"].items()))
        )
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


# -- leaderboard

Cell = Callable[[dict[str, Any]], str]


def _score_cell(o: dict[str, Any]) -> Cell:
    """A row's value of objective ``o``, formatted."""
    return lambda r: _score(o, r["values"].get(o["name"]))


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
    columns += [(Column(o["short"], True), _score_cell(o)) for o in objectives_of(record)]
    if TIE_BREAK not in shown_metrics(record):
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
    first = []
    if record.get("constraints"):
        first.append(f"meeting the constraints ({', '.join(record['constraints'])}) first")
    if len(objectives_of(record)) > 1:
        first.append("then the Pareto front before the trials it dominates")
    lead = f"{'; '.join(first)}; then " if first else ""
    return (
        f"Best first: complete trials, then pruned, running, waiting and failed ones, each by "
        f"{lead}{by}; ties go to the lower validation loss, then the earlier trial. "
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


# -- Pareto front


def pareto_front(record: dict[str, Any]) -> Optional[Section]:
    """With two or more objectives: the trials no other beats on all of them, as a plot and a table."""
    pareto = record.get("pareto")
    if not pareto:
        return None
    objectives = objectives_of(record)
    front = [p for p in pareto["points"] if p["front"]]
    blocks: list[Fragment] = [Note(pareto["note"])]
    if pareto["constraints"]:
        met = sum(p["feasible"] for p in pareto["points"])
        blocks.append(
            Note(
                f"Constraints: {', '.join(c['text'] for c in pareto['constraints'])}; "
                f"{met} of {len(pareto['points'])} complete trials meet them."
            )
        )
    if not front:
        blocks.append(Note("no complete trial is on the front yet (none meets the constraints)"))
        return Section("pareto", "Pareto front", tuple(blocks))
    blocks += [
        Figure("pareto.png", "Pareto front"),
        table(
            [
                Column("trial", True),
                "backbone",
                Column("head", True),
                *(Column(o["short"], True) for o in objectives),
            ],
            [
                [p["number"], _fmt(p["backbone"]), _fmt(p["head_width"])]
                + [_score(o, p["values"].get(o["name"])) for o in objectives]
                for p in front
            ],
        ),
    ]
    return Section("pareto", "Pareto front", tuple(blocks))
