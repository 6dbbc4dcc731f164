"""The report's data record: a study (and its run folder) as one plain, JSON-able dict.

Every number a rendering or a figure shows is in this record.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Optional

from autotl.errors import first_line
from autotl.objective import Objectives
from autotl.report._common import SCHEMA, TOP_CURVES, _clean
from autotl.report._engines import engines_compared
from autotl.report._evaluate import _evaluate
from autotl.report._rows import best_row, history, state_counts, trial_rows, val_images
from autotl.runfolder import RunFolder
from autotl.stats import wilson_interval


def _described(exc: BaseException) -> str:
    """``Type: first line of its message`` (the type alone when it has none), for the report's notes."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name


def _summary(
    study: Any,
    rows: list[dict[str, Any]],
    data: dict[str, Any],
    run: dict[str, Any],
    trials: list[Any],
) -> dict[str, Any]:
    counts = data.get("counts") or {}
    n_val = val_images(data)
    n_train = sum((counts.get("train") or {}).values()) or None
    best = best_row(rows, Objectives.of_study(study))
    by_state = state_counts(rows)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete or _dt.datetime.now() for t in trials if t.datetime_start]
    out: dict[str, Any] = {
        "study_name": study.study_name,
        "data": {
            "source": data.get("source") or run.get("source"),
            "split": data.get("split"),
            "class_names": data.get("class_names")
            or study.user_attrs.get("class_names")
            or run.get("class_names")
            or [],
            "counts": counts,
            "train_images": n_train,
            "val_images": n_val,
            "skipped": data.get("skipped"),
            "fingerprint": data.get("fingerprint") or run.get("data_fingerprint"),
        },
        "trials": len(rows),
        "states": by_state,
        "seconds_in_trials": sum(r["seconds"] or 0.0 for r in rows),
        "seconds_wall": (max(ends) - min(starts)).total_seconds() if starts else 0.0,
        "best": None,
    }
    if best is not None:
        ci = wilson_interval(best["val_accuracy"] * n_val, n_val) if n_val else None
        out["best"] = {
            "number": best["number"],
            "val_accuracy": best["val_accuracy"],
            "val_loss": best["val_loss"],
            "ci95": list(ci) if ci else None,
            "ci_method": f"Wilson score interval, n = {n_val} validation images"
            if ci
            else "unknown validation-set size",
            "correct": round(best["val_accuracy"] * n_val) if n_val else None,
            "params": dict(best["params"]),
            "head_stable_epoch": best["head_stable_epoch"],
            "gate": best["gate_reason"],
            "epochs_phase1": best["epochs_phase1"],
            "epochs_phase2": best["epochs_phase2"],
            "seconds": best["seconds"],
        }
    return out


def _skipped_backbones(folder: RunFolder, trials: list[Any]) -> dict[str, str]:
    """Backbone to why the search left it out: its checks or weights at start-up (``checks.json``), or
    failures in a row in the latest search session (see :mod:`autotl.failures`)."""
    from autotl.failures import dropped_backbones, latest_session

    out = {
        str(name): str(check.get("reason") or "failed its checks")
        for name, check in folder.checks().items()
        if isinstance(check, dict) and check.get("passed") is False
    }
    out.update(dropped_backbones(trials, latest_session(trials)))
    return out


def _curves(trials: list[Any], rows: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    by_number = {t.number: t for t in trials}
    out = []
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
                "val_accuracy": r["val_accuracy"],
                "boundary": len(h1.get("val_loss", [])),
                "head_stable_epoch": r["head_stable_epoch"],
                "phase1": {k: list(v) for k, v in h1.items()},
                "phase2": {k: list(v) for k, v in h2.items()},
            }
        )
    return out


def _importances(study: Any, trials: list[Any]) -> dict[str, Any]:
    done = [
        t for t in trials if t.state.name == "COMPLETE" and t.values
    ]  # the leaderboard's complete rows
    names = sorted({k for t in done for k in t.params})
    varying = [k for k in names if len({json.dumps(t.params.get(k)) for t in done}) > 1]
    if len(done) < 2 or not varying:
        return {
            "values": None,
            "note": f"not enough trials: importances need at least 2 complete trials whose parameters vary ({len(done)} complete)",
        }
    if len({tuple(t.values) for t in done}) < 2:
        return {
            "values": None,
            "note": f"not enough trials: all {len(done)} complete trials scored the same, so no parameter explains a difference",
        }
    try:
        import optuna

        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        values = optuna.importance.get_param_importances(
            study,
            evaluator=evaluator,
            params=varying,
            target=(lambda t: t.values[0]) if len(study.directions) > 1 else None,
        )
        return {
            "values": {k: float(v) for k, v in values.items()},
            "note": f"fANOVA over {len(done)} complete trials",
        }
    except Exception as exc:
        return {"values": None, "note": f"not enough trials for importances ({_described(exc)})"}


def _search(
    study: Any, trials: list[Any], rows: list[dict[str, Any]], space: dict[str, Any]
) -> dict[str, Any]:
    complete = [r for r in rows if r["state"] == "complete" and r["val_accuracy"] is not None]
    by_backbone: dict[str, dict[str, Any]] = {}
    for r in complete:
        b = by_backbone.setdefault(str(r["backbone"]), {"values": [], "trials": []})
        b["values"].append(r["val_accuracy"])
        b["trials"].append(r["number"])
    for b in by_backbone.values():
        b.update(n=len(b["values"]), mean=sum(b["values"]) / len(b["values"]), max=max(b["values"]))
    points = [
        {
            "number": r["number"],
            "backbone": r["backbone"],
            "unfreeze_blocks": r["unfreeze_blocks"],
            "finetune_lr": r["finetune_lr"],
            "phase2_ran": r["gate"] == "passed",
            "val_accuracy": r["val_accuracy"],
        }
        for r in complete
    ]
    p2 = space.get("phase2") or {}
    ranges = {
        "unfreeze_blocks": [
            (p2.get("unfreeze_blocks") or {}).get("low"),
            (p2.get("unfreeze_blocks") or {}).get("high"),
        ],
        "finetune_lr": [
            (p2.get("learning_rate") or {}).get("low"),
            (p2.get("learning_rate") or {}).get("high"),
        ],
    }
    return {
        "history": history(rows, Objectives.of_study(study)),
        "importances": _importances(study, trials),
        "by_backbone": by_backbone,
        "points": points,
        "ranges": ranges,
    }


def _plugin_versions(used: set[str]) -> dict[str, str]:
    """Version of each plugin the trials used, from its distribution when it has one."""
    import importlib
    import importlib.util

    from autotl._version import __version__
    from autotl.registry import DEFAULT_PLUGINS, get_registry

    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    out: dict[str, str] = {}
    try:
        registry = get_registry(
            [n for n in sorted(used) if n not in DEFAULT_PLUGINS and importable(n)]
        )
        out.update(registry.plugin_versions())
    except Exception as exc:
        out["(registry)"] = f"cannot load plugins: {first_line(exc)}"
    for name in sorted(used):
        if name in out:
            continue
        if name in DEFAULT_PLUGINS:
            out[name] = f"built into autotl {__version__}"
            continue
        version = None
        if importable(name):
            try:
                version = getattr(importlib.import_module(name), "__version__", None)
            except Exception:
                version = None
        out[name] = f"module {name} {version}" if version else f"module {name} (no version)"
    return out


def _lineage(
    study: Any,
    rows: list[dict[str, Any]],
    run: dict[str, Any],
    summary: dict[str, Any],
    space: dict[str, Any],
    data: dict[str, Any],
    storage_url: str,
) -> dict[str, Any]:
    from autotl._version import __version__
    from autotl.lineage import library_versions, list_models

    used = {r["plugin"] for r in rows if r.get("plugin")}
    try:
        recorded = [
            {k: m[k] for k in ("artifact_id", "kind", "path", "sha256", "trial_number", "created")}
            for m in list_models(storage_url, study.study_name)
        ]
    except Exception:
        recorded = []
    val_fraction, seed = RunFolder.split_settings(data, space)
    sampler = study.user_attrs.get("sampler") or space.get("sampler") or "tpe"
    searched = study.user_attrs.get("versions") or run.get("versions")
    return {
        "autotl_version": __version__,
        "plugins": _plugin_versions(used),
        "trials": [
            {
                "number": r["number"],
                "backbone": r["backbone"],
                "plugin": r["plugin"],
                "weights_origin": r["weights_origin"],
                "weights_sha256": r["weights_sha256"],
            }
            for r in sorted(rows, key=lambda r: r["number"])
        ],
        "data_fingerprint": summary["data"]["fingerprint"],
        "data_source": summary["data"]["source"],
        "seeds": {
            "space": space.get("seed"),
            f"sampler ({sampler})": space.get("seed"),
            "split": seed,
            "val_fraction": val_fraction,
        },
        "sampler": sampler,
        "objectives": Objectives.of_study(study).names,
        "library_versions": library_versions(),
        "library_versions_at_search": searched,
        "command": run.get("command") or None,
        "run_created": _dt.datetime.fromtimestamp(run["created"]).isoformat(timespec="seconds")
        if isinstance(run.get("created"), (int, float))
        else None,
        "weights": run.get("weights"),
        "space": space,
        "recorded_models": recorded,
    }


def build_record(
    run_dir: Path,
    study: Any,
    storage_url: str,
    images: Optional[dict[str, bytes]] = None,
    top_curves: int = TOP_CURVES,
    evaluate: bool = True,
) -> dict[str, Any]:
    """The whole report as one JSON-able dict; thumbnails go into ``images`` (name -> PNG bytes)."""
    images = {} if images is None else images
    from autotl.storage import safe_url

    folder = RunFolder(run_dir)
    run = folder.record()
    data = dict(study.user_attrs.get("data") or {})
    space = dict(study.user_attrs.get("space") or run.get("space") or {})
    trials, rows = trial_rows(study, space)
    summary = _summary(study, rows, data, run, trials)
    summary["skipped_backbones"] = _skipped_backbones(folder, trials)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "generated": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "run_dir": str(run_dir.resolve()),
        "storage": safe_url(storage_url),
        "engine": study.user_attrs.get("engine", "optuna"),
        "summary": summary,
        "leaderboard": rows,
        "curves": _curves(trials, rows, top_curves),
        "search": _search(study, trials, rows, space),
        "engines": engines_compared(folder, storage_url, study, rows, val_images(data)),
    }
    if evaluate:
        try:
            record["evaluation"] = _evaluate(folder, study, summary, storage_url, images)
        except Exception as exc:  # a model that cannot load must not cost the rest of the report
            record["evaluation"] = {
                "skipped": f"evaluating the best model failed ({_described(exc)})"
            }
    else:
        record["evaluation"] = {"skipped": "not asked"}
    record["lineage"] = _lineage(study, rows, run, summary, space, data, storage_url)
    return _clean(record)
