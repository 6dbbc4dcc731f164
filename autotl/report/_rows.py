"""Trials as leaderboard rows, and what is computed from rows alone (best, counts, history)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from autotl.report._common import STATES, _epochs
from autotl.run.storage import trial_seconds
from autotl.scoring.objective import Objectives, trial_metrics
from autotl.training.trainer import Gate

if TYPE_CHECKING:
    from optuna import Study

PASSED = Gate.PASSED.value


def _note(a: dict[str, Any]) -> str:
    """Why a trial ended as it did (failed, pruned, screened, gate closed, phase 2 not kept)."""
    note = a.get("fail_reason") or ""
    if not note and a.get("pruned_at"):
        note = f"pruned in phase {a['pruned_at'].get('phase')} at step {a['pruned_at'].get('step')}"
    if not note and a.get("stage") == "screen":
        note = "two-stage: phase 1 only"
    if not note and a.get("gate") and a.get("gate") != PASSED:
        note = f"no fine-tuning: {a.get('gate_reason') or a['gate']}"
    if not note and a.get("gate") == PASSED and a.get("phase2_kept") is False:
        note = "fine-tuning did not improve on phase 1: phase-1 model kept"
    if a.get("stage") == "finalist" and a.get("finalist_of") is not None:
        finalist = f"finalist: fine-tunes the setting of phase-1 trial {a['finalist_of']}"
        note = "; ".join(filter(None, [finalist, note]))
    return note


def _broken(metrics: dict[str, float], objectives: Objectives) -> str:
    """The constraints a scored trial breaks, in words (empty when it meets them or has no metrics)."""
    broken = objectives.broken(metrics) if metrics and objectives.constraints else []
    return f"breaks {', '.join(broken)}" if broken else ""


def _trial_row(t: Any, phase1_epochs: Optional[int], objectives: Objectives) -> dict[str, Any]:
    """One leaderboard row; every field is optional, since a RUNNING trial has only some."""
    p, a = t.params, t.user_attrs
    scored = t.state.name in ("COMPLETE", "PRUNED")
    metrics = trial_metrics(t) if scored else {}
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
    if seconds is None:
        seconds = trial_seconds(t)
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
        "metrics": metrics,
        "values": {o.name: metrics.get(o.metric) for o in objectives},
        "val_accuracy": metrics.get("val_accuracy"),
        "val_loss": metrics.get("val_loss"),
        "seconds": seconds,
        "seconds_by_phase": a.get("seconds") or {},
        "gate": a.get("gate"),
        "gate_reason": a.get("gate_reason") or a.get("gate"),
        "phase2_kept": a.get("phase2_kept"),
        "cut": a.get("cut"),
        "unfrozen_layers": a.get("unfrozen_layers"),
        "fail_reason": a.get("fail_reason"),
        "pruned_at": a.get("pruned_at"),
        "note": "; ".join(filter(None, [_note(a), _broken(metrics, objectives)])),
        "plugin": a.get("plugin"),
        "weights_origin": a.get("weights_origin"),
        "weights_sha256": a.get("weights_sha256"),
        "model_path": a.get("model_path"),
        "started": t.datetime_start.isoformat() if t.datetime_start else None,
        "finished": t.datetime_complete.isoformat() if t.datetime_complete else None,
    }


_STATE_ORDER = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "failed": 4}


def _rank_keys(rows: list[dict[str, Any]], objectives: Objectives) -> dict[int, tuple[Any, ...]]:
    """Leaderboard order by trial number: by state (complete first), then the objectives' order
    within the state (constraints met, Pareto level, objectives; unscored rows last)."""
    out: dict[int, tuple[Any, ...]] = {}
    for state in {r["state"] for r in rows}:
        group = [r for r in rows if r["state"] == state]
        keys = objectives.keys([(r["metrics"], r["number"]) for r in group])
        for r, k in zip(group, keys):
            out[r["number"]] = (_STATE_ORDER.get(state, 5), *k)
    return out


def best_row(rows: list[dict[str, Any]], objectives: Objectives) -> Optional[dict[str, Any]]:
    """The best complete row, in the order of :func:`autotl.scoring.objective.ranked_trials` (None when no
    complete row meets the constraints)."""
    complete = [
        r
        for r in rows
        if r["state"] == "complete" and r["metrics"].get(objectives.primary.metric) is not None
    ]
    if not complete:
        return None
    keys = objectives.keys([(r["metrics"], r["number"]) for r in complete])
    key, best = min(zip(keys, complete), key=lambda kr: kr[0])
    return best if key[0] == 0 else None


def state_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    by_state: dict[str, int] = {}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    return by_state


def val_images(data: dict[str, Any]) -> Optional[int]:
    """How many validation images the study's data summary counts (None when unknown)."""
    return sum(((data.get("counts") or {}).get("val") or {}).values()) or None


def history(rows: list[dict[str, Any]], objectives: Objectives) -> list[dict[str, Any]]:
    """Scored trials in trial order, with the best complete value of the primary objective so far."""
    primary = objectives.primary
    ordered = sorted(
        (
            r
            for r in rows
            if r["state"] in ("complete", "pruned") and r["values"].get(primary.name) is not None
        ),
        key=lambda r: r["number"],
    )
    out, best = [], None
    for r in ordered:
        value = r["values"][primary.name]
        if r["state"] == "complete" and primary.better(value, best):
            best = value
        out.append(
            {"number": r["number"], "state": r["state"], "value": value, "best_so_far": best}
        )
    return out


def trial_rows(study: Study, space: dict[str, Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The study's trials, and their leaderboard rows ranked best first (each with its ``rank``)."""
    objectives = Objectives.of_study(study)
    trials = list(study.get_trials(deepcopy=False))
    p1 = (space.get("phase1") or {}).get("epochs")
    unsorted = [_trial_row(t, p1, objectives) for t in trials]
    keys = _rank_keys(unsorted, objectives)
    rows = sorted(unsorted, key=lambda r: keys[r["number"]])
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return trials, rows
