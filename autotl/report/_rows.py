"""Trials as leaderboard rows, and what is computed from rows alone (best, counts, history)."""

from __future__ import annotations

import datetime as _dt
from typing import Any, Optional

from autotl.report._common import STATES, _epochs
from autotl.search import rank_key


def _trial_row(t: Any, phase1_epochs: Optional[int]) -> dict[str, Any]:
    """One leaderboard row; every field is optional, since a RUNNING trial has only some."""
    p, a = t.params, t.user_attrs
    history = a.get("history") or {}
    e1, e2 = _epochs(history, "phase1"), _epochs(history, "phase2")
    if not history and t.intermediate_values:  # pruned or running: count the reported steps
        steps = list(t.intermediate_values)
        if phase1_epochs:
            e1 = sum(1 for s in steps if s < phase1_epochs)
            e2 = sum(1 for s in steps if s >= phase1_epochs)
        else:
            e1 = len(steps)
    seconds = a.get("seconds_total")
    if seconds is None and t.datetime_start is not None:
        end = t.datetime_complete or _dt.datetime.now()
        seconds = (end - t.datetime_start).total_seconds()
    note = a.get("fail_reason") or ""
    if not note and a.get("pruned_at"):
        note = f"pruned in phase {a['pruned_at'].get('phase')} at step {a['pruned_at'].get('step')}"
    if not note and a.get("stage") == "screen":
        note = "screening: phase 1 only"
    if not note and a.get("gate") and a.get("gate") != "passed":
        note = f"no fine-tuning: {a['gate']}"
    if not note and a.get("gate") == "passed" and a.get("phase2_kept") is False:
        note = "fine-tuning did not improve on phase 1: phase-1 model kept"
    if a.get("stage") == "finalist" and a.get("finalist_of") is not None:
        note = "; ".join(filter(None, [f"finalist: fine-tunes the setting of screening trial {a['finalist_of']}", note]))
    return {
        "number": t.number,
        "params": dict(p),
        "state": STATES.get(t.state.name, t.state.name.lower()),
        "stage": a.get("stage"),
        "backbone": p.get("backbone"),
        "head_width": p.get("head_width"),
        "dropout": p.get("dropout"),
        "unfreeze_blocks": p.get("unfreeze_blocks"),
        "finetune_lr": p.get("finetune_lr"),
        "head_stable_epoch": a.get("head_stable_epoch"),
        "epochs_phase1": e1,
        "epochs_phase2": e2,
        "val_accuracy": t.value if t.state.name in ("COMPLETE", "PRUNED") else None,
        "val_loss": a.get("val_loss"),
        "seconds": seconds,
        "seconds_by_phase": a.get("seconds") or {},
        "gate": a.get("gate"),
        "phase2_kept": a.get("phase2_kept"),
        "cut": a.get("cut"),
        "unfrozen_layers": a.get("unfrozen_layers"),
        "fail_reason": a.get("fail_reason"),
        "pruned_at": a.get("pruned_at"),
        "note": note,
        "plugin": a.get("plugin"),
        "weights_origin": a.get("weights_origin"),
        "weights_sha256": a.get("weights_sha256"),
        "model_path": a.get("model_path"),
        "started": t.datetime_start.isoformat() if t.datetime_start else None,
        "finished": t.datetime_complete.isoformat() if t.datetime_complete else None,
    }


_STATE_ORDER = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "failed": 4}


def _rank_key(row: dict[str, Any]) -> tuple:
    """Leaderboard order: by state (complete first), then autotl.search.rank_key (unscored rows last within a state)."""
    acc = row["val_accuracy"]
    return (_STATE_ORDER.get(row["state"], 5), acc is None, *rank_key(acc or 0.0, row["val_loss"], row["number"]))


def best_row(rows: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The best complete row, in the order of autotl.search.ranked_trials: accuracy, then lower val loss, then earlier."""
    complete = [r for r in rows if r["state"] == "complete" and r["val_accuracy"] is not None]
    if not complete:
        return None
    return min(complete, key=lambda r: rank_key(r["val_accuracy"], r["val_loss"], r["number"]))


def state_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    by_state: dict[str, int] = {}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    return by_state


def val_images(data: dict[str, Any]) -> Optional[int]:
    """How many validation images the study's data summary counts (None when unknown)."""
    return sum(((data.get("counts") or {}).get("val") or {}).values()) or None


def history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scored trials in trial order, with the best complete value so far (the optimisation history)."""
    ordered = sorted((r for r in rows if r["state"] in ("complete", "pruned") and r["val_accuracy"] is not None), key=lambda r: r["number"])
    out, best = [], None
    for r in ordered:
        if r["state"] == "complete":
            best = r["val_accuracy"] if best is None else max(best, r["val_accuracy"])
        out.append({"number": r["number"], "state": r["state"], "value": r["val_accuracy"], "best_so_far": best})
    return out


def trial_rows(study: Any, space: dict[str, Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The study's trials, and their leaderboard rows ranked best first (each with its ``rank``)."""
    trials = list(study.get_trials(deepcopy=False))
    p1 = (space.get("phase1") or {}).get("epochs")
    rows = sorted((_trial_row(t, p1) for t in trials), key=_rank_key)
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return trials, rows
