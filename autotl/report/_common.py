"""Constants and small helpers shared by the report's modules."""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Optional

from autotl.engine.samplers import DEFAULT_SAMPLER
from autotl.errors import first_line
from autotl.run.folder import RunFolder
from autotl.scoring.objective import DEFAULT_OBJECTIVES, OBJECTIVES, Objective, Objectives
from autotl.scoring.stats import wilson_interval

if TYPE_CHECKING:
    from optuna import Study

REPORT_FILES = RunFolder.REPORT_FILES  # the plots' folder, as report.md and report.json name it
#: 2: the record names the study's ``objectives`` and ``sampler``, and carries each score by objective
#: (``values``, ``best``, ``mean``, ``median``) beside the accuracy fields of schema 1.
SCHEMA = "autotl-report-2"
#: The metric the Wilson interval is about: a proportion of correctly classified validation images.
ACCURACY = "val_accuracy"
TOP_CURVES = 6
MAX_MISCLASSIFIED = 24
THUMB = 64
STATES = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}


def _clean(value: Any) -> Any:
    """Strict JSON: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except Exception:
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return str(value)


def _fmt(value: Any, spec: str = "", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _epochs(history: dict[str, Any], phase: str) -> Optional[int]:
    h = (history or {}).get(phase)
    if h is None:
        return None
    return len(h.get("val_loss") or h.get("loss") or [])


def _epoch1(epoch: Optional[int]) -> Optional[int]:
    """A 0-based epoch index (as stored) as the 1-based epoch number people and the plots use."""
    return None if epoch is None else int(epoch) + 1


def _described(exc: BaseException) -> str:
    """``Type: first line of its message`` (the type alone when it has none), for the report's notes."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name


def objective_records(objectives: Objectives) -> list[dict[str, Any]]:
    """The study's objectives as the record stores them: name, metric, direction, label, short, fmt."""
    return [asdict(o) for o in objectives]


def objectives_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's objectives, primary first (a record without them: the default objectives)."""
    found = record.get("objectives")
    if found:
        return list(found)
    return objective_records(Objectives(tuple(OBJECTIVES[n] for n in DEFAULT_OBJECTIVES)))


def _score(objective: dict[str, Any] | Objective, value: Any) -> str:
    """A value of ``objective`` as its format says (``-`` when missing)."""
    fmt = objective.fmt if isinstance(objective, Objective) else objective.get("fmt") or ".4f"
    return _fmt(value, fmt)


def sampler_of(study: Study, space: dict[str, Any]) -> str:
    """The sampler's name as the engine recorded it (``tpe``, ``keras-tuner random``, ...)."""
    return str(study.user_attrs.get("sampler") or space.get("sampler") or DEFAULT_SAMPLER)


def accuracy_ci(metrics: dict[str, Any], n_val: Optional[int]) -> Optional[list[float]]:
    """The 95% Wilson interval of a trial's validation accuracy over ``n_val`` images (None if unknown)."""
    accuracy = metrics.get(ACCURACY)
    if not n_val or accuracy is None:
        return None
    return list(wilson_interval(accuracy * n_val, n_val))


def _ci(ci: Optional[list[float]]) -> str:
    """A 95% interval as ``low-high`` (``-`` when unknown)."""
    return f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else "-"


def shown_metrics(record: dict[str, Any]) -> set[str]:
    """The metrics the record's objectives already show (so no second column repeats one)."""
    return {o["metric"] for o in objectives_of(record)}
