"""Engines compared: the run's studies, one per search engine, side by side.

``autotl search`` (Optuna) keeps its trials in the study ``autotl``;
``autotl search --engine keras-tuner`` records its trials in the same storage
as the study ``autotl-keras-tuner`` (:mod:`autotl.engine.keras_tuner`).  When a run
folder has both, the report compares them on the same data and space.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from autotl.report._common import ACCURACY, accuracy_ci
from autotl.report._rows import best_row, history, state_counts, trial_rows, val_images
from autotl.run.folder import RunFolder
from autotl.scoring.objective import Objectives

if TYPE_CHECKING:
    from optuna import Study

NOTE = (
    "Each engine searched the same space on the same data and validation split with the same two-phase trainer; "
    "only the choice of the trials differs. Times are the trials' own training times."
)


def _value_of(name: str) -> Callable[[dict[str, Any]], Any]:
    """A row's value of the objective ``name`` (None when it has none)."""
    return lambda r: r["values"].get(name)


def _complete(rows: list[dict[str, Any]], pick: Callable[[dict[str, Any]], Any]) -> list[float]:
    """``pick(row)`` of every complete row that has it."""
    found = (pick(r) for r in rows if r["state"] == "complete")
    return [v for v in found if v is not None]


def _best(best: dict[str, Any], n_val: Optional[int]) -> dict[str, Any]:
    return {
        "number": best["number"],
        "values": dict(best["values"]),
        "val_accuracy": best["val_accuracy"],
        "val_loss": best["val_loss"],
        "ci95": accuracy_ci(best["metrics"], n_val),
        "params": dict(best["params"]),
    }


def _engine_summary(
    study: Study, engine: str, rows: list[dict[str, Any]], n_val: Optional[int], reported: bool
) -> dict[str, Any]:
    objectives = Objectives.of_study(study)
    by_objective = {o.name: _complete(rows, _value_of(o.name)) for o in objectives}
    accuracies = _complete(rows, lambda r: r["metrics"].get(ACCURACY))
    best = best_row(rows, objectives)
    states = state_counts(rows)
    return {
        "study_name": study.study_name,
        "engine": engine,
        "tuner": study.user_attrs.get("tuner")
        or study.user_attrs.get("sampler")
        or (study.sampler.__class__.__name__ if engine == "optuna" else None),
        "reported": reported,  # the study the rest of the report is about
        "objectives": objectives.names,
        "trials": len(rows),
        "complete": states.get("complete", 0),
        "failed": states.get("failed", 0),
        "states": states,
        "best": _best(best, n_val) if best else None,
        "mean": {k: statistics.fmean(v) if v else None for k, v in by_objective.items()},
        "median": {k: statistics.median(v) if v else None for k, v in by_objective.items()},
        "mean_val_accuracy": statistics.fmean(accuracies) if accuracies else None,
        "median_val_accuracy": statistics.median(accuracies) if accuracies else None,
        "seconds_in_trials": sum(r["seconds"] or 0.0 for r in rows),
        "val_images": n_val,
        "history": history(rows, objectives),
    }


def engines_compared(
    run: RunFolder, storage_url: str, study: Study, rows: list[dict[str, Any]], n_val: Optional[int]
) -> Optional[dict[str, Any]]:
    """Per engine's study of this run: trials complete and failed, best (with its Wilson interval), mean, median, time,
    history; ``None`` when the storage holds only one engine's study."""
    from autotl.run.storage import load_study

    studies = run.engine_studies(storage_url, study.study_name)
    if len(studies) < 2:
        return None
    out = []
    for name, engine in studies:
        if name == study.study_name:
            other, other_rows = study, rows
        else:
            other = load_study(storage_url, name)
            _, other_rows = trial_rows(other, dict(other.user_attrs.get("space") or {}))
        n = val_images(dict(other.user_attrs.get("data") or {})) or n_val
        out.append(_engine_summary(other, engine, other_rows, n, name == study.study_name))
    return {"studies": out, "note": NOTE}
