"""Study reports: what a search found, how it got there, and where the best model comes from.

``write_report(run_dir)`` reads the study (read-only, so it is safe while a
search is still running), computes one data record -- a plain, JSON-able dict
-- and then renders that record three ways in the run folder:

* ``report.html``: one self-contained page (inline CSS, plots as inline
  base64 PNG, no script and no network reference of any kind);
* ``report.md``: for a terminal or a pull request, with its plots written as
  files in ``report_files/``;
* ``report.json``: the record itself, for tools.

As Optuna's visualisation module does, plots compute their data first (here:
the record) and then draw it, so every number in a picture is in the JSON too.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

from autotl.errors import UsageError

__all__ = ["write_report", "build_record", "wilson_interval", "cmd_report", "add_report_parser", "REPORT_FILES"]

REPORT_HTML, REPORT_MD, REPORT_JSON = "report.html", "report.md", "report.json"
REPORT_FILES = "report_files"
SCHEMA = "autotl-report-1"
TOP_CURVES = 6
MAX_MISCLASSIFIED = 24
THUMB = 64
Z95 = 1.959963984540054
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


# ---------------------------------------------------------------- small helpers

def wilson_interval(accuracy: float, n: int, z: float = Z95) -> Optional[tuple[float, float]]:
    """The Wilson score interval of a proportion measured on ``n`` items (95% by default)."""
    if not n or n <= 0 or accuracy is None or not math.isfinite(accuracy):
        return None
    p = min(max(float(accuracy), 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always holds p; min/max only undo floating-point round-off at p = 0 or 1
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))


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


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the data record

def _load_study(run_dir: Path, storage_url: Optional[str], study_name: str) -> tuple[Any, str]:
    from autotl.search import STUDY_DB, open_study

    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise UsageError(f"run folder {run_dir} {what}; pass the --out folder of an `autotl search`")
    if storage_url is None:
        db = run_dir / STUDY_DB
        if not db.is_file():
            raise UsageError(f"no study in {run_dir} (no {STUDY_DB}); run `autotl search --out {run_dir}` first, or pass --storage URL")
        storage_url = f"sqlite:///{db.resolve()}"
    return open_study(storage_url, study_name, create=False), storage_url


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
    if not note and a.get("gate") and a.get("gate") != "passed":
        note = f"no fine-tuning: {a['gate']}"
    if not note and a.get("gate") == "passed" and a.get("phase2_kept") is False:
        note = "fine-tuning did not improve on phase 1: phase-1 model kept"
    return {
        "number": t.number,
        "params": dict(p),
        "state": STATES.get(t.state.name, t.state.name.lower()),
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


def _rank_key(row: dict[str, Any]) -> tuple:
    order = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "failed": 4}
    acc = row["val_accuracy"]
    return (order.get(row["state"], 5), acc is None, -(acc or 0.0), row["number"])


def _split_settings(data: dict[str, Any], space: dict[str, Any]) -> tuple[float, int]:
    """The val_fraction and seed the search split with: from the data summary's split text, else the space."""
    val_fraction, seed = float(space.get("val_fraction", 0.2)), int(space.get("seed", 0))
    m = re.search(r"val_fraction=([0-9.eE+-]+), seed=(-?\d+)", str(data.get("split", "")))
    if m:
        val_fraction, seed = float(m.group(1)), int(m.group(2))
    return val_fraction, seed


def _summary(study: Any, rows: list[dict[str, Any]], data: dict[str, Any], run: dict[str, Any], trials: list[Any]) -> dict[str, Any]:
    counts = data.get("counts") or {}
    n_val = sum((counts.get("val") or {}).values()) or None
    n_train = sum((counts.get("train") or {}).values()) or None
    complete = [r for r in rows if r["state"] == "complete" and r["val_accuracy"] is not None]
    # the same order as autotl.search.ranked_trials: accuracy, then lower val loss, then earlier
    best = min(complete, key=lambda r: (-r["val_accuracy"], r["val_loss"] if r["val_loss"] is not None else float("inf"), r["number"])) if complete else None
    by_state: dict[str, int] = {}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete or _dt.datetime.now() for t in trials if t.datetime_start]
    out: dict[str, Any] = {
        "study_name": study.study_name,
        "data": {
            "source": data.get("source") or run.get("source"),
            "split": data.get("split"),
            "class_names": data.get("class_names") or study.user_attrs.get("class_names") or run.get("class_names") or [],
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
        ci = wilson_interval(best["val_accuracy"], n_val) if n_val else None
        out["best"] = {
            "number": best["number"],
            "val_accuracy": best["val_accuracy"],
            "val_loss": best["val_loss"],
            "ci95": list(ci) if ci else None,
            "ci_method": f"Wilson score interval, n = {n_val} validation images" if ci else "unknown validation-set size",
            "correct": round(best["val_accuracy"] * n_val) if n_val else None,
            "params": dict(best["params"]),
            "head_stable_epoch": best["head_stable_epoch"],
            "gate": best["gate"],
            "epochs_phase1": best["epochs_phase1"],
            "epochs_phase2": best["epochs_phase2"],
            "seconds": best["seconds"],
        }
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
        out.append({
            "number": r["number"], "backbone": r["backbone"], "val_accuracy": r["val_accuracy"],
            "boundary": len(h1.get("val_loss", [])), "head_stable_epoch": r["head_stable_epoch"],
            "phase1": {k: list(v) for k, v in h1.items()}, "phase2": {k: list(v) for k, v in h2.items()},
        })
    return out


def _importances(study: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    complete = [r for r in rows if r["state"] == "complete" and r["val_accuracy"] is not None]
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    names = sorted({k for t in done for k in t.params})
    varying = [k for k in names if len({json.dumps(t.params.get(k)) for t in done}) > 1]
    if len(complete) < 2 or not varying:
        return {"values": None, "note": f"not enough trials: importances need at least 2 complete trials whose parameters vary ({len(complete)} complete)"}
    if len({t.value for t in done}) < 2:
        return {"values": None, "note": f"not enough trials: all {len(done)} complete trials scored the same, so no parameter explains a difference"}
    try:
        import optuna

        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varying)
        return {"values": {k: float(v) for k, v in values.items()}, "note": f"fANOVA over {len(complete)} complete trials"}
    except Exception as exc:
        return {"values": None, "note": f"not enough trials for importances ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"}


def _search(study: Any, rows: list[dict[str, Any]], space: dict[str, Any]) -> dict[str, Any]:
    ordered = sorted((r for r in rows if r["state"] in ("complete", "pruned") and r["val_accuracy"] is not None), key=lambda r: r["number"])
    history, best = [], None
    for r in ordered:
        if r["state"] == "complete":
            best = r["val_accuracy"] if best is None else max(best, r["val_accuracy"])
        history.append({"number": r["number"], "state": r["state"], "value": r["val_accuracy"], "best_so_far": best})
    complete = [r for r in rows if r["state"] == "complete" and r["val_accuracy"] is not None]
    by_backbone: dict[str, dict[str, Any]] = {}
    for r in complete:
        b = by_backbone.setdefault(str(r["backbone"]), {"values": [], "trials": []})
        b["values"].append(r["val_accuracy"])
        b["trials"].append(r["number"])
    for b in by_backbone.values():
        b.update(n=len(b["values"]), mean=sum(b["values"]) / len(b["values"]), max=max(b["values"]))
    points = [{"number": r["number"], "backbone": r["backbone"], "unfreeze_blocks": r["unfreeze_blocks"],
               "finetune_lr": r["finetune_lr"], "phase2_ran": r["gate"] == "passed", "val_accuracy": r["val_accuracy"]} for r in complete]
    p2 = space.get("phase2") or {}
    ranges = {"unfreeze_blocks": [(p2.get("unfreeze_blocks") or {}).get("low"), (p2.get("unfreeze_blocks") or {}).get("high")],
              "finetune_lr": [(p2.get("learning_rate") or {}).get("low"), (p2.get("learning_rate") or {}).get("high")]}
    return {"history": history, "importances": _importances(study, rows), "by_backbone": by_backbone, "points": points, "ranges": ranges}


def _load_dataset(source: str, val_fraction: float, seed: int) -> Any:
    from autotl import data as data_mod

    if source.startswith("sample:"):
        from autotl.registry import get_registry

        images, labels, names = get_registry().sample(source.split(":", 1)[1]).load()
        return data_mod.from_arrays(images, labels, names, source, val_fraction, seed)
    return data_mod.load_folder(source, val_fraction, seed)


def _thumbnail(pixels: Any) -> bytes:
    from PIL import Image

    im = Image.fromarray(pixels)
    im.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    if max(im.size) < THUMB:  # tiny images (8x8 digits): blow up without blurring
        k = max(1, THUMB // max(im.size))
        im = im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _model_trial(run_dir: Path, model_file: Path, storage_url: str) -> Optional[int]:
    """Which trial's model the best-model file is: by its marker, by lineage record, else by equal bytes in trials/."""
    import json

    from autotl.search import BEST_MARKER

    marker = run_dir / BEST_MARKER
    if model_file.name == "best_model.keras" and marker.is_file():
        return int(json.loads(marker.read_text())["trial"])
    try:
        from autotl.lineage import find_model

        found = find_model(storage_url, model_file)
        if found and found.get("trial_number") is not None:
            return int(found["trial_number"])
    except Exception:
        pass
    try:
        from autotl.weights import sha256_file

        want = sha256_file(model_file)
        for f in sorted((run_dir / "trials").glob("*/model.keras")):
            if sha256_file(f) == want:
                return int(f.parent.name)
    except (OSError, ValueError):
        pass
    return None


def _evaluate(run_dir: Path, summary: dict[str, Any], space: dict[str, Any], storage_url: str, data: dict[str, Any], images: dict[str, bytes]) -> dict[str, Any]:
    """Confusion matrix, per-class precision/recall and the misclassified images of best_model.keras."""
    import numpy as np

    from autotl.search import BEST_MODEL

    model_file = run_dir / BEST_MODEL
    source, fingerprint = summary["data"]["source"], summary["data"]["fingerprint"]
    if not model_file.is_file():
        return {"skipped": f"no {BEST_MODEL} in {run_dir} yet: no trial has finished"}
    if not source:
        return {"skipped": "the study does not say where its data came from (no data summary, no run.json)"}
    val_fraction, seed = _split_settings(data, space)
    try:
        dataset = _load_dataset(source, val_fraction, seed)
    except Exception as exc:
        return {"skipped": f"cannot reload the data from {source} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"}
    if fingerprint and dataset.fingerprint != fingerprint:
        return {"skipped": f"the data at {source} changed since the search (fingerprint {dataset.fingerprint[:12]}, the study used {fingerprint[:12]}); the validation split cannot be re-created"}
    import keras
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    model = keras.saving.load_model(model_file, safe_mode=True)
    names = list(dataset.class_names)
    try:
        resize = model.get_layer("resize")
        size = (int(resize.height), int(resize.width))
    except (ValueError, AttributeError):
        size = None
    val = dataset.val
    if size:
        probs = np.concatenate([np.asarray(model.predict_on_batch(b)) for b in val.batches(size, 32)])
    else:
        probs = np.concatenate([np.asarray(model.predict_on_batch(val.load(i)[None].astype("float32"))) for i in range(len(val))])
    y_true = np.asarray(val.labels)
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(names)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    accuracy = float((y_true == y_pred).mean()) if len(y_true) else None
    ci = wilson_interval(accuracy, len(y_true)) if accuracy is not None else None
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")]
    missed = []
    for k, i in enumerate(wrong[:MAX_MISCLASSIFIED]):
        name = f"misclassified_{k:02d}.png"
        images[name] = _thumbnail(val.load(int(i)))
        where = val.paths[int(i)] if val.paths is not None else f"{source} val image {int(i)}"
        missed.append({"index": int(i), "file": where, "true": names[y_true[i]], "predicted": names[y_pred[i]],
                       "confidence": float(probs[i, y_pred[i]]), "thumbnail": f"{REPORT_FILES}/{name}"})
    return {
        "model": str(model_file), "model_trial": _model_trial(run_dir, model_file, storage_url),
        "images": int(len(y_true)), "accuracy": accuracy, "ci95": list(ci) if ci else None,
        "class_names": names, "confusion_matrix": cm.tolist(),
        "per_class": [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(names, precision, recall, f1, support)],
        "misclassified_total": int(len(wrong)), "misclassified": missed,
        "split": {"val_fraction": val_fraction, "seed": seed, "fingerprint": dataset.fingerprint},
    }


def _plugin_versions(used: set[str]) -> dict[str, str]:
    """Version of each plugin the trials used, from its distribution when it has one."""
    import importlib
    import importlib.util

    import autotl
    from autotl.registry import DEFAULT_PLUGINS, get_registry

    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    out: dict[str, str] = {}
    try:
        registry = get_registry([n for n in sorted(used) if n not in DEFAULT_PLUGINS and importable(n)])
        out.update(registry.plugin_versions())
    except Exception as exc:
        out["(registry)"] = f"cannot load plugins: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    for name in sorted(used):
        if name in out:
            continue
        if name in DEFAULT_PLUGINS:
            out[name] = f"built into autotl {autotl.__version__}"
            continue
        version = None
        if importable(name):
            try:
                version = getattr(importlib.import_module(name), "__version__", None)
            except Exception:
                version = None
        out[name] = f"module {name} {version}" if version else f"module {name} (no version)"
    return out


def _lineage(study: Any, rows: list[dict[str, Any]], run: dict[str, Any], summary: dict[str, Any], space: dict[str, Any], data: dict[str, Any], storage_url: str) -> dict[str, Any]:
    import autotl
    from autotl.lineage import library_versions, list_models

    used = {r["plugin"] for r in rows if r.get("plugin")}
    try:
        recorded = [{k: m[k] for k in ("artifact_id", "kind", "path", "sha256", "trial_number", "created")} for m in list_models(storage_url, study.study_name)]
    except Exception:
        recorded = []
    val_fraction, seed = _split_settings(data, space)
    searched = study.user_attrs.get("versions") or run.get("versions")
    return {
        "autotl_version": autotl.__version__,
        "plugins": _plugin_versions(used),
        "trials": [{"number": r["number"], "backbone": r["backbone"], "plugin": r["plugin"], "weights_origin": r["weights_origin"],
                    "weights_sha256": r["weights_sha256"]} for r in sorted(rows, key=lambda r: r["number"])],
        "data_fingerprint": summary["data"]["fingerprint"],
        "data_source": summary["data"]["source"],
        "seeds": {"space": space.get("seed"), "sampler (TPE)": space.get("seed"), "split": seed, "val_fraction": val_fraction},
        "library_versions": library_versions(),
        "library_versions_at_search": searched,
        "command": run.get("command") or None,
        "run_created": _dt.datetime.fromtimestamp(run["created"]).isoformat(timespec="seconds") if isinstance(run.get("created"), (int, float)) else None,
        "weights": run.get("weights"),
        "space": space,
        "recorded_models": recorded,
    }


def build_record(run_dir: Path, study: Any, storage_url: str, images: Optional[dict[str, bytes]] = None,
                 top_curves: int = TOP_CURVES, evaluate: bool = True) -> dict[str, Any]:
    """The whole report as one JSON-able dict; thumbnails go into ``images`` (name -> PNG bytes)."""
    images = {} if images is None else images
    run = _read_json(run_dir / "run.json")
    data = dict(study.user_attrs.get("data") or {})
    space = dict(study.user_attrs.get("space") or run.get("space") or {})
    trials = list(study.get_trials(deepcopy=False))
    p1 = (space.get("phase1") or {}).get("epochs")
    rows = sorted((_trial_row(t, p1) for t in trials), key=_rank_key)
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    summary = _summary(study, rows, data, run, trials)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "generated": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "run_dir": str(run_dir.resolve()),
        "storage": _safe_url(storage_url),
        "summary": summary,
        "leaderboard": rows,
        "curves": _curves(trials, rows, top_curves),
        "search": _search(study, rows, space),
    }
    if evaluate:
        try:
            record["evaluation"] = _evaluate(run_dir, summary, space, storage_url, data, images)
        except Exception as exc:  # a model that cannot load must not cost the rest of the report
            record["evaluation"] = {"skipped": f"evaluating the best model failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"}
    else:
        record["evaluation"] = {"skipped": "not asked"}
    record["lineage"] = _lineage(study, rows, run, summary, space, data, storage_url)
    return _clean(record)


# ---------------------------------------------------------------- figures (drawn from the record)

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=90, layout="constrained")
    return fig


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _series(curve: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    values = list(curve["phase1"].get(key, [])) + list(curve["phase2"].get(key, []))
    return list(range(1, len(values) + 1)), [v if v is not None else float("nan") for v in values]


def _mark_boundary(ax: Any, curve: dict[str, Any], label: bool) -> None:
    n1, n2 = curve["boundary"], len(curve["phase2"].get("val_loss", []))
    if n2:
        ax.axvspan(n1 + 0.5, n1 + n2 + 0.5, color="#f2e6c9", alpha=0.5, lw=0)
        ax.axvline(n1 + 0.5, color="#7f6000", ls="--", lw=1, label="phase 2 starts" if label else None)


def _fig_curve(curve: dict[str, Any]) -> bytes:
    fig = _figure(8.4, 2.9)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style, name in ((metric, "-", "train"), (f"val_{metric}", "--", "val")):
            x, y = _series(curve, key)
            if y:
                ax.plot(x, y, style, marker=".", ms=4, color=COLORS[0] if name == "train" else COLORS[1], label=f"{name} {metric}")
        _mark_boundary(ax, curve, metric == "loss")
        if curve.get("head_stable_epoch") is not None:
            ax.axvline(curve["head_stable_epoch"] + 1, color="#888", ls=":", lw=1, label="head stable" if metric == "loss" else None)
        ax.set_xlabel("epoch (phase 1, then phase 2)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"trial {curve['number']} ({curve['backbone']}), val accuracy {_fmt(curve['val_accuracy'], '.4f')}", fontsize=10)
    return _png(fig)


def _fig_overlay(curves: list[dict[str, Any]]) -> bytes:
    fig = _figure(8.4, 3.1)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("val_accuracy", "val_loss")):
        for i, c in enumerate(curves):
            x, y = _series(c, key)
            color = COLORS[i % len(COLORS)]
            ax.plot(x, y, "-", marker=".", ms=3, color=color, label=f"trial {c['number']}")
            if c["phase2"].get(key) and c["boundary"] < len(y):
                ax.plot([c["boundary"] + 1], [y[c["boundary"]]], marker="D", ms=6, color=color, mec="black", mew=0.6)
        ax.set_xlabel("epoch (diamond: first fine-tuning epoch)")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("best trials: validation curves overlaid", fontsize=10)
    return _png(fig)


def _fig_history(history: list[dict[str, Any]]) -> bytes:
    fig = _figure(6.4, 3.0)
    ax = fig.subplots()
    done = [h for h in history if h["state"] == "complete"]
    pruned = [h for h in history if h["state"] == "pruned"]
    ax.plot([h["number"] for h in done], [h["value"] for h in done], "o", color=COLORS[0], label="complete")
    if pruned:
        ax.plot([h["number"] for h in pruned], [h["value"] for h in pruned], "x", color="#999", label="pruned (last reported)")
    best = [(h["number"], h["best_so_far"]) for h in history if h["best_so_far"] is not None]
    if best:
        ax.step([b[0] for b in best], [b[1] for b in best], where="post", color=COLORS[1], label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    numbers = [h["number"] for h in history]
    ax.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)
    ax.set_ylabel("val accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("optimisation history", fontsize=10)
    return _png(fig)


def _fig_importances(values: dict[str, float]) -> bytes:
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig = _figure(6.4, 0.5 + 0.45 * len(items))
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color=COLORS[0])
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1e-9, max(v for _, v in items)) * 1.2)
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title("parameter importances", fontsize=10)
    return _png(fig)


def _fig_params(search: dict[str, Any]) -> bytes:
    import numpy as np

    fig = _figure(9.6, 3.0)
    axes = fig.subplots(1, 3, sharey=True)
    names = sorted(search["by_backbone"])
    for i, name in enumerate(names):
        vals = search["by_backbone"][name]["values"]
        jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [0.0]
        axes[0].plot(i + np.asarray(jitter), vals, "o", color=COLORS[i % len(COLORS)], alpha=0.8)
        axes[0].plot([i - 0.25, i + 0.25], [max(vals)] * 2, "-", color="black", lw=1)
    axes[0].set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    axes[0].set_xlim(-0.6, max(0.6, len(names) - 0.4))
    axes[0].set_title("by backbone (bar: best)", fontsize=9)
    axes[0].set_ylabel("val accuracy")
    pts = search["points"]
    ran = [p for p in pts if p["phase2_ran"]]
    skipped = [p for p in pts if not p["phase2_ran"]]
    for group, marker, label in ((ran, "o", "phase 2 ran"), (skipped, "s", "phase 2 skipped")):
        xs = [p["unfreeze_blocks"] for p in group if p["unfreeze_blocks"] is not None]
        ys = [p["val_accuracy"] for p in group if p["unfreeze_blocks"] is not None]
        if xs:
            axes[1].plot(xs, ys, marker, ls="", color=COLORS[0] if marker == "o" else "#999", label=label, alpha=0.8)
        xs = [p["finetune_lr"] for p in group if p["finetune_lr"]]
        ys = [p["val_accuracy"] for p in group if p["finetune_lr"]]
        if xs:
            axes[2].plot(xs, ys, marker, ls="", color=COLORS[0] if marker == "o" else "#999", label=label, alpha=0.8)
    from matplotlib.ticker import MaxNLocator, NullFormatter

    ranges = search.get("ranges") or {}
    ub = [v for v in (ranges.get("unfreeze_blocks") or []) if v is not None] + [p["unfreeze_blocks"] for p in pts if p["unfreeze_blocks"] is not None]
    if ub:
        axes[1].set_xlim(min(ub) - 0.5, max(ub) + 0.5)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("unfreeze blocks")
    axes[1].set_title("by unfreeze depth", fontsize=9)
    axes[2].set_xscale("log")
    lr = [v for v in (ranges.get("finetune_lr") or []) if v] + [p["finetune_lr"] for p in pts if p["finetune_lr"]]
    if lr:
        lo, hi = min(lr), max(lr)
        if hi / lo < 10:  # always show at least a decade, so the log axis has labelled ticks
            mid = math.sqrt(lo * hi)
            lo, hi = mid / math.sqrt(10), mid * math.sqrt(10)
        axes[2].set_xlim(lo / 1.3, hi * 1.3)
    axes[2].xaxis.set_minor_formatter(NullFormatter())
    axes[2].set_xlabel("fine-tune learning rate (log)")
    axes[2].set_title("by fine-tune rate", fontsize=9)
    if pts:
        axes[2].legend(fontsize=7, loc="best")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _png(fig)


def _fig_confusion(ev: dict[str, Any]) -> bytes:
    import numpy as np

    cm = np.asarray(ev["confusion_matrix"])
    names = ev["class_names"]
    n = len(names)
    side = min(9.0, 2.2 + 0.45 * n)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    if n <= 30:
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color="white" if cm[i, j] > top / 2 else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("confusion matrix (validation set)", fontsize=10)
    return _png(fig)


def render_figures(record: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name, all drawn from the record."""
    figs: dict[str, bytes] = {}
    curves = record["curves"]
    if curves:
        figs["curves_best.png"] = _fig_overlay(curves)
        for c in curves:
            figs[f"curve_trial_{c['number']:04d}.png"] = _fig_curve(c)
    search = record["search"]
    if search["history"]:
        figs["history.png"] = _fig_history(search["history"])
    if search["importances"].get("values"):
        figs["importances.png"] = _fig_importances(search["importances"]["values"])
    if search["points"]:
        figs["params.png"] = _fig_params(search)
    ev = record.get("evaluation") or {}
    if ev.get("confusion_matrix"):
        figs["confusion.png"] = _fig_confusion(ev)
    return figs


# ---------------------------------------------------------------- rendering

LEADER_COLUMNS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("trial", "number", lambda r: str(r["number"])),
    ("state", "state", lambda r: r["state"]),
    ("backbone", "backbone", lambda r: _fmt(r["backbone"])),
    ("head", "head_width", lambda r: _fmt(r["head_width"])),
    ("dropout", "dropout", lambda r: _fmt(r["dropout"], ".2f")),
    ("unfreeze", "unfreeze_blocks", lambda r: _fmt(r["unfreeze_blocks"])),
    ("fine-tune lr", "finetune_lr", lambda r: _fmt(r["finetune_lr"], ".1e")),
    ("head stable", "head_stable_epoch", lambda r: _fmt(_epoch1(r["head_stable_epoch"]))),
    ("epochs p1", "epochs_phase1", lambda r: _fmt(r["epochs_phase1"])),
    ("epochs p2", "epochs_phase2", lambda r: _fmt(r["epochs_phase2"])),
    ("val acc", "val_accuracy", lambda r: _fmt(r["val_accuracy"], ".4f")),
    ("val loss", "val_loss", lambda r: _fmt(r["val_loss"], ".4f")),
    ("time", "seconds", lambda r: _fmt_seconds(r["seconds"])),
    ("note", "note", lambda r: r["note"] or ""),
]


LEADER_NOTE = ("Best first. Epochs are counted from 1; 'head stable' is the phase-1 epoch with the head's best validation loss "
               "('-' when it never plateaued, so phase 2 did not run); 'epochs p1/p2' are the epochs each phase ran.")


def _sections(record: dict[str, Any]) -> dict[str, Any]:
    """Text pieces shared by the HTML and Markdown renderings."""
    s = record["summary"]
    d = s["data"]
    best = s["best"]
    facts: list[tuple[str, str]] = [
        ("study", f"{s['study_name']} in {record['storage']}"),
        ("data", f"{d['source'] or 'unknown'}" + (f" ({d['split']})" if d.get("split") else "")),
        ("classes", f"{len(d['class_names'])}: {', '.join(d['class_names'])}" if d["class_names"] else "unknown"),
        ("images", f"{_fmt(d['train_images'])} train / {_fmt(d['val_images'])} val" + (f", {d['skipped']} file(s) skipped" if d.get("skipped") else "")),
        ("trials", ", ".join(f"{n} {state}" for state, n in sorted(s["states"].items())) or "none yet"),
        ("time", f"{_fmt_seconds(s['seconds_in_trials'])} in trials, {_fmt_seconds(s['seconds_wall'])} from first start to last finish"),
    ]
    if best:
        ci = best["ci95"]
        ci_text = f" (95% CI {ci[0]:.4f}-{ci[1]:.4f}; {best['ci_method']})" if ci else f" ({best['ci_method']})"
        facts.insert(0, ("best trial", f"trial {best['number']}: val accuracy {best['val_accuracy']:.4f}{ci_text}, val loss {_fmt(best['val_loss'], '.4f')}"))
        settings = ", ".join(f"{k}={_fmt(v, '.3g') if isinstance(v, float) else v}" for k, v in sorted(best["params"].items()))
        facts.insert(1, ("best settings", f"{settings}; head stable at epoch {_fmt(_epoch1(best['head_stable_epoch']))}, "
                                          f"{_fmt(best['epochs_phase1'])} + {_fmt(best['epochs_phase2'])} epochs, fine-tuning: {best['gate'] or '-'}"))
    else:
        facts.insert(0, ("best trial", "none: no trial has completed yet"))
    counts_rows = []
    counts = d.get("counts") or {}
    for c in d["class_names"]:
        counts_rows.append([c, _fmt((counts.get("train") or {}).get(c)), _fmt((counts.get("val") or {}).get(c))])
    return {"facts": facts, "counts": counts_rows}


def _per_class_rows(ev: dict[str, Any]) -> list[list[str]]:
    return [[p["class"], f"{p['precision']:.3f}", f"{p['recall']:.3f}", f"{p['f1']:.3f}", str(p["support"])] for p in ev["per_class"]]


def _lineage_rows(lin: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("autotl", lin["autotl_version"]),
        ("plugins", "; ".join(f"{k}: {v}" for k, v in lin["plugins"].items()) or "-"),
        ("data fingerprint", lin["data_fingerprint"] or "-"),
        ("data source", lin["data_source"] or "-"),
        ("seeds", ", ".join(f"{k} {v}" for k, v in lin["seeds"].items())),
        ("weights", str(lin.get("weights") or "-")),
        ("libraries (report)", ", ".join(f"{k} {v}" for k, v in lin["library_versions"].items())),
    ]
    if lin.get("library_versions_at_search"):
        rows.append(("libraries (search)", ", ".join(f"{k} {v}" for k, v in lin["library_versions_at_search"].items())))
    rows.append(("command", lin["command"] or "- (not recorded)"))
    if lin.get("run_created"):
        rows.append(("run created", lin["run_created"]))
    return rows


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1b1f24;background:#fafbfc}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.5em;margin:.4em 0 .1em}h2{font-size:1.2em;border-bottom:2px solid #d0d7de;padding-bottom:4px;margin-top:1.8em}
h3{font-size:1em;margin:1.2em 0 .4em}
.sub{color:#57606a;margin:0 0 1em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0;background:#fff}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f3f6}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td{background:#e6f4ea;font-weight:600}
tr.failed td{color:#8c1d18}tr.running td{color:#0550ae;font-style:italic}tr.pruned td{color:#6e7781}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:.5em 0}
dl.facts dt{font-weight:600;color:#57606a}dl.facts dd{margin:0}
img.plot{max-width:100%;height:auto;border:1px solid #d0d7de;background:#fff;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure.thumb{margin:0;padding:4px;border:1px solid #d0d7de;background:#fff;width:92px;text-align:center;font-size:11px}
figure.thumb img{width:64px;height:64px;object-fit:contain;image-rendering:pixelated}
.note{color:#57606a;font-style:italic}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;word-break:break-all}
"""


def _h(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _html_table(headers: list[str], rows: list[list[str]], classes: Optional[list[str]] = None, numeric: Optional[set[int]] = None) -> str:
    numeric = numeric or set()
    out = ["<table><thead><tr>", *(f"<th>{_h(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{_h(classes[i])}"' if classes and classes[i] else ""
        cells = "".join(f'<td class="num">{_h(c)}</td>' if j in numeric else f"<td>{_h(c)}</td>" for j, c in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(figs: dict[str, bytes], name: str, alt: str, cls: str = "plot") -> str:
    data = base64.b64encode(figs[name]).decode("ascii")
    return f'<img class="{cls}" alt="{_h(alt)}" src="data:image/png;base64,{data}">'


def render_html(record: dict[str, Any], figs: dict[str, bytes], thumbs: dict[str, bytes]) -> str:
    sec = _sections(record)
    s = record["summary"]
    best_no = (s["best"] or {}).get("number")
    p: list[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        # the page may load nothing from anywhere: only its own inline style and data: images
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autotl report: {_h(s['data']['source'] or s['study_name'])}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>autotl report: {_h(s['data']['source'] or s['study_name'])}</h1>",
        f'<p class="sub">generated {_h(record["generated"])} from {_h(record["run_dir"])}</p>',
        "<h2 id=\"summary\">1. Summary</h2>", '<dl class="facts">',
        *(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in sec["facts"]), "</dl>",
    ]
    if sec["counts"]:
        p.append(_html_table(["class", "train", "val"], sec["counts"], numeric={1, 2}))

    p.append('<h2 id="leaderboard">2. Leaderboard</h2>')
    rows = record["leaderboard"]
    classes = ["best" if r["number"] == best_no else r["state"] for r in rows]
    p.append(_html_table([c[0] for c in LEADER_COLUMNS], [[f(r) for _, _, f in LEADER_COLUMNS] for r in rows], classes, numeric=set(range(3, 13)) | {0}))
    p.append(f'<p class="note">{_h(LEADER_NOTE)}</p>')

    p.append('<h2 id="curves">3. Learning curves</h2>')
    if record["curves"]:
        p.append('<p class="note">Phase 1 trains the head on the frozen base; the shaded part after the dashed line is phase 2 (fine-tuning). '
                 "The dotted line marks the epoch where the head's validation loss was best.</p>")
        p.append(_img(figs, "curves_best.png", "validation curves of the best trials"))
        for c in record["curves"]:
            p.append(f"<h3>trial {c['number']}</h3>")
            p.append(_img(figs, f"curve_trial_{c['number']:04d}.png", f"learning curves of trial {c['number']}"))
    else:
        p.append('<p class="note">no complete trial has learning curves yet</p>')

    p.append('<h2 id="search">4. The search</h2>')
    search = record["search"]
    if "history.png" in figs:
        p.append(_img(figs, "history.png", "optimisation history"))
    imp = search["importances"]
    p.append("<h3>parameter importances</h3>")
    if imp.get("values"):
        p.append(_img(figs, "importances.png", "parameter importances"))
    p.append(f'<p class="note">{_h(imp["note"])}</p>')
    if search["by_backbone"]:
        p.append("<h3>accuracy by backbone, unfreeze depth and fine-tune rate</h3>")
        p.append(_html_table(["backbone", "complete trials", "mean val acc", "best val acc"],
                             [[k, str(v["n"]), f"{v['mean']:.4f}", f"{v['max']:.4f}"] for k, v in sorted(search["by_backbone"].items())], numeric={1, 2, 3}))
    if "params.png" in figs:
        p.append(_img(figs, "params.png", "accuracy by backbone, unfreeze depth and fine-tune rate"))

    p.append('<h2 id="evaluation">5. Best model on the validation set</h2>')
    ev = record["evaluation"]
    if ev.get("skipped"):
        p.append(f'<p class="note">skipped: {_h(ev["skipped"])}</p>')
    else:
        ci = ev["ci95"]
        which = f"trial {ev['model_trial']}" if ev.get("model_trial") is not None else "trial unknown"
        p.append(f"<p>{_h(ev['model'])} ({_h(which)}) on {ev['images']} validation images: accuracy <b>{ev['accuracy']:.4f}</b>"
                 + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "") + f", {ev['misclassified_total']} misclassified.</p>")
        if "confusion.png" in figs:
            p.append(_img(figs, "confusion.png", "confusion matrix"))
        p.append(_html_table(["class", "precision", "recall", "f1", "support"], _per_class_rows(ev), numeric={1, 2, 3, 4}))
        if ev["misclassified"]:
            shown = len(ev["misclassified"])
            p.append(f"<h3>misclassified images ({shown} of {ev['misclassified_total']}, most confident first)</h3><div class=\"grid\">")
            for m in ev["misclassified"]:
                name = m["thumbnail"].split("/")[-1]
                p.append(f'<figure class="thumb" title="{_h(m["file"])}">{_img(thumbs, name, m["file"], "")}'
                         f"<figcaption>true <b>{_h(m['true'])}</b><br>pred {_h(m['predicted'])} ({m['confidence']:.2f})</figcaption></figure>")
            p.append("</div>")

    p.append('<h2 id="lineage">6. Lineage</h2>')
    lin = record["lineage"]
    p.append('<dl class="facts">' + "".join(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in _lineage_rows(lin)) + "</dl>")
    p.append("<h3>weights per trial</h3>")
    p.append(_html_table(["trial", "backbone", "plugin", "weights", "weights sha256"],
                         [[str(t["number"]), _fmt(t["backbone"]), _fmt(t["plugin"]), _fmt(t["weights_origin"]), _fmt(t["weights_sha256"])] for t in lin["trials"]], numeric={0}))
    if lin["recorded_models"]:
        p.append("<h3>recorded model files</h3>")
        p.append(_html_table(["id", "kind", "trial", "sha256", "path", "created"],
                             [[str(m["artifact_id"]), m["kind"], _fmt(m["trial_number"]), (m["sha256"] or "")[:16], m["path"], _fmt(m["created"])] for m in lin["recorded_models"]]))
    if lin.get("space"):
        p.append("<details><summary>search space</summary><pre>" + _h(json.dumps(lin["space"], indent=2)) + "</pre></details>")
    p.append("</main></body></html>")
    return "\n".join(p) + "\n"


def _md_cell(text: Any) -> str:
    return str("" if text is None else text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]], right: Optional[set[int]] = None) -> list[str]:
    right = right or set()
    out = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
           "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(record: dict[str, Any], figs: dict[str, bytes]) -> str:
    sec = _sections(record)
    s = record["summary"]
    md: list[str] = [f"# autotl report: {s['data']['source'] or s['study_name']}", "",
                     f"_generated {record['generated']} from {record['run_dir']}_", "", "## 1. Summary", ""]
    md += [f"- **{k}**: {_md_cell(v)}" for k, v in sec["facts"]]
    if sec["counts"]:
        md += [""] + _md_table(["class", "train", "val"], sec["counts"], {1, 2})
    md += ["", "## 2. Leaderboard", ""]
    md += _md_table([c[0] for c in LEADER_COLUMNS], [[f(r) for _, _, f in LEADER_COLUMNS] for r in record["leaderboard"]], set(range(3, 13)) | {0})
    md += ["", f"_{LEADER_NOTE}_"]
    md += ["", "## 3. Learning curves", ""]
    if record["curves"]:
        md += ["Phase 1 trains the head on the frozen base; the shaded part after the dashed line is phase 2 (fine-tuning).", "",
               f"![validation curves of the best trials]({REPORT_FILES}/curves_best.png)", ""]
        md += [f"![trial {c['number']}]({REPORT_FILES}/curve_trial_{c['number']:04d}.png)" for c in record["curves"]]
    else:
        md += ["_no complete trial has learning curves yet_"]
    md += ["", "## 4. The search", ""]
    search = record["search"]
    if "history.png" in figs:
        md += [f"![optimisation history]({REPORT_FILES}/history.png)", ""]
    imp = search["importances"]
    md += ["### Parameter importances", ""]
    if imp.get("values"):
        md += _md_table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in imp["values"].items()], {1})
        md += ["", f"![parameter importances]({REPORT_FILES}/importances.png)"]
    md += ["", f"_{imp['note']}_", ""]
    if search["by_backbone"]:
        md += ["### Accuracy by backbone, unfreeze depth and fine-tune rate", ""]
        md += _md_table(["backbone", "complete trials", "mean val acc", "best val acc"],
                        [[k, str(v["n"]), f"{v['mean']:.4f}", f"{v['max']:.4f}"] for k, v in sorted(search["by_backbone"].items())], {1, 2, 3})
    if "params.png" in figs:
        md += ["", f"![accuracy by parameter]({REPORT_FILES}/params.png)"]
    md += ["", "## 5. Best model on the validation set", ""]
    ev = record["evaluation"]
    if ev.get("skipped"):
        md += [f"_skipped: {ev['skipped']}_"]
    else:
        ci = ev["ci95"]
        which = f"trial {ev['model_trial']}" if ev.get("model_trial") is not None else "trial unknown"
        md += [f"`{ev['model']}` ({which}) on {ev['images']} validation images: accuracy **{ev['accuracy']:.4f}**"
               + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "") + f", {ev['misclassified_total']} misclassified.", ""]
        names = ev["class_names"]
        md += ["Confusion matrix (rows: true, columns: predicted):", ""]
        md += _md_table(["true \\ predicted", *names], [[names[i], *map(str, row)] for i, row in enumerate(ev["confusion_matrix"])], set(range(1, len(names) + 1)))
        md += [""] + _md_table(["class", "precision", "recall", "f1", "support"], _per_class_rows(ev), {1, 2, 3, 4})
        if ev["misclassified"]:
            md += ["", f"### Misclassified images ({len(ev['misclassified'])} of {ev['misclassified_total']})", ""]
            md += _md_table(["image", "true", "predicted", "confidence", "file"],
                            [[f"![]({m['thumbnail']})", m["true"], m["predicted"], f"{m['confidence']:.2f}", m["file"]] for m in ev["misclassified"]], {3})
    md += ["", "## 6. Lineage", ""]
    lin = record["lineage"]
    md += [f"- **{k}**: {_md_cell(v) if k != 'command' else '`' + str(v) + '`'}" for k, v in _lineage_rows(lin)]
    md += ["", "### Weights per trial", ""]
    md += _md_table(["trial", "backbone", "plugin", "weights", "weights sha256"],
                    [[str(t["number"]), _fmt(t["backbone"]), _fmt(t["plugin"]), _fmt(t["weights_origin"]), _fmt(t["weights_sha256"])] for t in lin["trials"]], {0})
    if lin["recorded_models"]:
        md += ["", "### Recorded model files", ""]
        md += _md_table(["id", "kind", "trial", "sha256", "path"],
                        [[str(m["artifact_id"]), m["kind"], _fmt(m["trial_number"]), (m["sha256"] or "")[:16], m["path"]] for m in lin["recorded_models"]])
    return "\n".join(md) + "\n"


# ---------------------------------------------------------------- entry points

def write_report(run_dir: Path | str, storage_url: Optional[str] = None, study_name: str = "autotl", *,
                 top_curves: int = TOP_CURVES, evaluate: bool = True) -> dict[str, Path]:
    """Write report.html, report.md (+ report_files/) and report.json into ``run_dir``; return their paths.

    Reads the study only, so it may run while a search is going on: running
    trials appear with the fields they have so far.
    """
    run_dir = Path(run_dir)  # figures are drawn with Figure + FigureCanvasAgg: no pyplot, no GUI backend
    study, url = _load_study(run_dir, storage_url, study_name)
    thumbs: dict[str, bytes] = {}
    record = build_record(run_dir, study, url, thumbs, top_curves, evaluate)
    figs = render_figures(record)
    record["figures"] = {name: f"{REPORT_FILES}/{name}" for name in figs}

    files = run_dir / REPORT_FILES
    files.mkdir(exist_ok=True)
    written = {**figs, **thumbs}
    for name, data in written.items():
        _atomic_write(files / name, data)
    for old in files.glob("*.png"):  # plots of an earlier report that this one no longer has
        if old.name not in written:
            old.unlink(missing_ok=True)
    paths = {"html": run_dir / REPORT_HTML, "md": run_dir / REPORT_MD, "json": run_dir / REPORT_JSON}
    _atomic_write(paths["html"], render_html(record, figs, thumbs).encode("utf-8"))
    _atomic_write(paths["md"], render_markdown(record, figs).encode("utf-8"))
    _atomic_write(paths["json"], (json.dumps(record, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    return paths


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="write report.html, report.md and report.json for a run",
                              description="Summarise a run folder's study: leaderboard, learning curves, the search, the best model on the validation set, lineage. Safe while the search is still running.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite in the run folder)")
    p.add_argument("--study-name", default="autotl", help="study name in the storage (default: autotl)")
    return p


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from autotl.cli import _quiet_tensorflow

        _quiet_tensorflow()
    except ImportError:
        pass
    paths = write_report(Path(args.run), args.storage, args.study_name)
    for key in ("html", "md", "json"):
        print(paths[key])
    return 0
