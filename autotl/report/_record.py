"""The report's data record: a study (and its run folder) as one plain, JSON-able dict.

Every number a rendering or a figure shows is in this record.  The record
names the study's objectives and sampler, so the renderings take their score
columns, labels and "better" direction from it.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.report._common import (
    ACCURACY,
    SCHEMA,
    TOP_CURVES,
    _clean,
    _described,
    accuracy_ci,
    objective_records,
    sampler_of,
)
from autotl.report._engines import engines_compared
from autotl.report._ensemble import ensemble_record
from autotl.report._evaluate import evaluate_best_model
from autotl.report._health import health_record
from autotl.report._lineage import lineage_record
from autotl.report._pareto import pareto_record
from autotl.report._rows import best_row, state_counts, trial_rows, val_images
from autotl.report._search import search_record
from autotl.run.folder import RunFolder
from autotl.scoring.objective import Objectives

if TYPE_CHECKING:
    from optuna import Study


def _best(best: dict[str, Any], n_val: Optional[int]) -> dict[str, Any]:
    """The best row as the summary shows it, with the Wilson interval of its accuracy."""
    accuracy = best["metrics"].get(ACCURACY)
    ci = accuracy_ci(best["metrics"], n_val)
    return {
        "number": best["number"],
        "values": dict(best["values"]),
        "metrics": dict(best["metrics"]),
        "val_accuracy": best["val_accuracy"],
        "val_loss": best["val_loss"],
        "ci95": ci,
        "ci_method": f"Wilson score interval, n = {n_val} validation images"
        if ci
        else "unknown validation-set size",
        "correct": round(accuracy * n_val) if ci else None,
        "params": dict(best["params"]),
        "head_stable_epoch": best["head_stable_epoch"],
        "gate": best["gate_reason"],
        "epochs_phase1": best["epochs_phase1"],
        "epochs_phase2": best["epochs_phase2"],
        "seconds": best["seconds"],
    }


def _data(study: Study, data: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Where the data came from and how it was split, from the study (the run folder's record as fallback)."""
    counts = data.get("counts") or {}
    return {
        "source": data.get("source") or run.get("source"),
        "split": data.get("split"),
        "class_names": data.get("class_names")
        or study.user_attrs.get("class_names")
        or run.get("class_names")
        or [],
        "counts": counts,
        "train_images": sum((counts.get("train") or {}).values()) or None,
        "val_images": val_images(data),
        "skipped": data.get("skipped"),
        "fingerprint": data.get("fingerprint") or run.get("data_fingerprint"),
    }


def _summary(
    study: Study,
    objectives: Objectives,
    rows: list[dict[str, Any]],
    data: dict[str, Any],
    run: dict[str, Any],
    trials: list[Any],
) -> dict[str, Any]:
    best = best_row(rows, objectives)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete or _dt.datetime.now() for t in trials if t.datetime_start]
    return {
        "study_name": study.study_name,
        "data": _data(study, data, run),
        "trials": len(rows),
        "states": state_counts(rows),
        "seconds_in_trials": sum(r["seconds"] or 0.0 for r in rows),
        "seconds_wall": (max(ends) - min(starts)).total_seconds() if starts else 0.0,
        "best": _best(best, val_images(data)) if best is not None else None,
    }


def _skipped_backbones(folder: RunFolder, trials: list[Any]) -> dict[str, str]:
    """Backbone to why the search left it out: its checks or weights at start-up (``checks.json``), or
    failures in a row in the latest search session (see :mod:`autotl.engine.failures`)."""
    from autotl.engine.failures import dropped_backbones, latest_session

    out = {
        str(name): str(check.get("reason") or "failed its checks")
        for name, check in folder.checks().items()
        if isinstance(check, dict) and check.get("passed") is False
    }
    out.update(dropped_backbones(trials, latest_session(trials)))
    return out


def _curves(trials: list[Any], rows: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Both phases' epoch histories of the ``top`` best complete trials that have them."""
    by_number = {t.number: t for t in trials}
    out: list[dict[str, Any]] = []
    for r in rows:
        if len(out) >= top:
            break
        history = by_number[r["number"]].user_attrs.get("history") or {}
        if r["state"] != "complete" or not (history.get("phase1") or {}).get("val_loss"):
            continue
        h1, h2 = history.get("phase1") or {}, history.get("phase2") or {}
        out.append(
            {
                "number": r["number"],
                "backbone": r["backbone"],
                "values": dict(r["values"]),
                "val_accuracy": r["val_accuracy"],
                "boundary": len(h1.get("val_loss", [])),
                "head_stable_epoch": r["head_stable_epoch"],
                "phase1": {k: list(v) for k, v in h1.items()},
                "phase2": {k: list(v) for k, v in h2.items()},
            }
        )
    return out


def _evaluation(
    folder: RunFolder,
    study: Study,
    summary: dict[str, Any],
    storage_url: str,
    images: dict[str, bytes],
    evaluate: bool,
    leaked: set[str],
) -> dict[str, Any]:
    if not evaluate:
        return {"skipped": "not asked"}
    try:
        return evaluate_best_model(folder, study, summary, storage_url, images, leaked)
    except Exception as exc:  # a model that cannot load must not cost the rest of the report
        return {"skipped": f"evaluating the best model failed ({_described(exc)})"}


def _backbone_screening(study: Any, storage_url: str) -> Optional[dict[str, Any]]:
    """What backbone screening decided and each backbone's scores (None: the search did not screen)."""
    from autotl.engine.backbone_screen import COLUMNS, DECISION_KEY, screening_rows
    from autotl.run.stages import read

    try:
        rows = screening_rows(study, storage_url, study.study_name)
        decision = read(storage_url, study.study_name, DECISION_KEY) if rows else None
    except Exception as exc:  # a table that cannot be read must not cost the rest of the report
        return {"skipped": f"backbone screening not read ({_described(exc)})"}
    if not rows or decision is None:
        return None
    return {
        "rule": decision.get("rule"),
        "sample_images": decision.get("sample_images"),
        "columns": dict(COLUMNS),
        "rows": rows,
    }


def build_record(
    run_dir: Path,
    study: Study,
    storage_url: str,
    images: Optional[dict[str, bytes]] = None,
    top_curves: int = TOP_CURVES,
    evaluate: bool = True,
) -> dict[str, Any]:
    """The whole report as one JSON-able dict; thumbnails go into ``images`` (name -> PNG bytes)."""
    from autotl.run.storage import safe_url

    images = {} if images is None else images
    folder = RunFolder(run_dir)
    run = folder.record()
    data = dict(study.user_attrs.get("data") or {})
    space = dict(study.user_attrs.get("space") or run.get("space") or {})
    objectives = Objectives.of_study(study)
    trials, rows = trial_rows(study, space)
    summary = _summary(study, objectives, rows, data, run, trials)
    summary["skipped_backbones"] = _skipped_backbones(folder, trials)
    health = health_record(folder, study, images)
    leaked = set((health or {}).get("leaked_val") or ())
    screening = _backbone_screening(study, storage_url)
    for r in (screening or {}).get("rows", []):
        if not r["kept"]:
            summary["skipped_backbones"].setdefault(r["backbone"], f"screened out: {r['reason']}")
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "generated": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "run_dir": str(run_dir.resolve()),
        "storage": safe_url(storage_url),
        "engine": study.user_attrs.get("engine", "optuna"),
        "objectives": objective_records(objectives),
        "constraints": [c.describe() for c in objectives.constraints],
        "sampler": sampler_of(study, space),
        "summary": summary,
        "leaderboard": rows,
        "pareto": pareto_record(rows, objectives),
        "curves": _curves(trials, rows, top_curves),
        "search": search_record(study, trials, rows, space, objectives),
        "backbone_screening": screening,
        "engines": engines_compared(folder, storage_url, study, rows, val_images(data)),
        "health": health,
        "evaluation": _evaluation(
            folder=folder,
            study=study,
            summary=summary,
            storage_url=storage_url,
            images=images,
            evaluate=evaluate,
            leaked=leaked,
        ),
        "ensemble": ensemble_record(folder, study),
        "lineage": lineage_record(study, rows, run, summary, space, storage_url),
    }
    return _clean(record)
