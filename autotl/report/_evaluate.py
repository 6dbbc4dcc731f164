"""Section 5 of the report: the best model scored again on the search's validation split."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.data.holdout import holdout_score
from autotl.errors import first_line
from autotl.report._common import MAX_MISCLASSIFIED, REPORT_FILES, THUMB
from autotl.run.folder import ENGINES, OPTUNA, RunFolder
from autotl.scoring.stats import wilson_interval

if TYPE_CHECKING:
    from optuna import Study

    from autotl.data.dataset import Dataset


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


def _model_trial(
    run: RunFolder, study: Study, engine: str, model_file: Path, storage_url: str
) -> Optional[int]:
    """Which trial of ``study`` the best-model file is: by its marker, else by its lineage record."""
    number = run.best_trial_number(engine)
    if number is not None:
        if engine == OPTUNA:
            return number
        from autotl.engine.keras_tuner_study import TRIAL_ID_ATTR

        # the keras-tuner engine's marker names keras-tuner's trial; its study copy keeps that id
        for t in study.get_trials(deepcopy=False):
            if str(t.user_attrs.get(TRIAL_ID_ATTR)) == str(number):
                return t.number
    try:
        from autotl.run.lineage import find_model

        found = find_model(storage_url, model_file)
        if found and found.get("trial_number") is not None:
            return int(found["trial_number"])
    except Exception:
        pass
    return None


def _reloaded(
    run: RunFolder, study: Study, summary: dict[str, Any], model_file: Path
) -> tuple[Any, Optional[str]]:
    """The search's dataset, reloaded, or why the validation split cannot be re-created."""
    source, fingerprint = summary["data"]["source"], summary["data"]["fingerprint"]
    if not model_file.is_file():
        return None, f"no {run.relative(model_file)} in {run.path} yet: no trial has finished"
    if not source:
        return (
            None,
            "the study does not say where its data came from (no data summary, no run.json)",
        )
    try:
        dataset, same = run.reload_dataset(source, study=study)
    except Exception as exc:
        return None, f"cannot reload the data from {source} ({first_line(exc)})"
    if fingerprint and not same:
        return None, (
            f"the data at {source} changed since the search (fingerprint {dataset.fingerprint[:12]}, "
            f"the study used {fingerprint[:12]}); the validation split cannot be re-created"
        )
    return dataset, None


def _probabilities(model: Any, val: Any) -> Any:
    """The model's class probabilities for every validation image, batched at its input size."""
    import numpy as np

    try:
        resize = model.get_layer("resize")
        size = (int(resize.height), int(resize.width))
    except (ValueError, AttributeError):
        size = None
    if size:
        return np.concatenate(
            [np.asarray(model.predict_on_batch(b)) for b in val.batches(size, 32)]
        )
    return np.concatenate(
        [
            np.asarray(model.predict_on_batch(val.load(i)[None].astype("float32")))
            for i in range(len(val))
        ]
    )


def _per_class(names: list[str], y_true: Any, y_pred: Any) -> list[dict[str, Any]]:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(names))), zero_division=0
    )
    return [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(names, precision, recall, f1, support)
    ]


def _misclassified(
    val: Any, names: list[str], y_true: Any, probs: Any, source: str, images: dict[str, bytes]
) -> tuple[int, list[dict[str, Any]]]:
    """How many images the model got wrong, and the most confident mistakes with thumbnails."""
    import numpy as np

    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")]
    missed = []
    for k, i in enumerate(wrong[:MAX_MISCLASSIFIED]):
        name = f"misclassified_{k:02d}.png"
        images[name] = _thumbnail(val.load(int(i)))
        where = val.paths[int(i)] if val.paths is not None else f"{source} val image {int(i)}"
        missed.append(
            {
                "index": int(i),
                "file": where,
                "true": names[y_true[i]],
                "predicted": names[y_pred[i]],
                "confidence": float(probs[i, y_pred[i]]),
                "thumbnail": f"{REPORT_FILES}/{name}",
            }
        )
    return len(wrong), missed


def _test(model: Any, dataset: Dataset, data: dict[str, Any]) -> dict[str, Any]:
    """The best model on the test split, scored once (the search never saw these images), or why not."""
    if dataset.test is None:
        return {
            "skipped": "no test split (add DATA_DIR/test/CLASS/IMAGE beside train/ and val/, or "
            "test_fraction in the search space); the validation score chose this model and is optimistic"
        }
    import numpy as np

    out = holdout_score(_probabilities(model, dataset.test), np.asarray(dataset.test.labels))
    out["split"] = dataset.test_split
    recorded = data.get("test_fingerprint")
    if recorded and recorded != dataset.test_fingerprint:
        out["note"] = "the test images differ from the ones present at search time"
    return out


def _without_leaked(
    val: Any, source: str, y_true: Any, y_pred: Any, leaked: set[str]
) -> Optional[dict[str, Any]]:
    """Accuracy on the validation images that have no copy in another split (data health's leakage)."""
    import numpy as np

    if not leaked or val.paths is None:
        return None
    clean = np.array(
        [os.path.relpath(p, source).replace(os.sep, "/") not in leaked for p in val.paths]
    )
    n, correct = int(clean.sum()), int((y_true == y_pred)[clean].sum())
    return {
        "leaked": len(clean) - n,
        "images": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "ci95": list(wilson_interval(correct, n)) if n else None,
    }


def evaluate_best_model(
    run: RunFolder,
    study: Study,
    summary: dict[str, Any],
    storage_url: str,
    images: dict[str, bytes],
    leaked: Optional[set[str]] = None,
) -> dict[str, Any]:
    """Confusion matrix, per-class precision/recall and the misclassified images of the study's best model
    file, and its accuracy without the ``leaked`` validation images (relative paths) too."""
    import numpy as np

    engine = str(study.user_attrs.get("engine") or OPTUNA)
    model_file = run.best_model(engine if engine in ENGINES else OPTUNA)
    dataset, skipped = _reloaded(run, study, summary, model_file)
    if skipped:
        return {"skipped": skipped}
    val_fraction, seed = run.split_settings(
        study.user_attrs.get("data") or {}, study.user_attrs.get("space") or {}
    )
    import keras
    from sklearn.metrics import confusion_matrix

    model = keras.saving.load_model(model_file, safe_mode=True)
    names = list(dataset.class_names)
    probs = _probabilities(model, dataset.val)
    y_true = np.asarray(dataset.val.labels)
    y_pred = probs.argmax(axis=1)
    correct = int((y_true == y_pred).sum())
    ci = wilson_interval(correct, len(y_true)) if len(y_true) else None
    total, missed = _misclassified(
        dataset.val, names, y_true, probs, summary["data"]["source"], images
    )
    return {
        "model": str(model_file),
        "model_trial": _model_trial(run, study, engine, model_file, storage_url),
        "images": len(y_true),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else None,
        "ci95": list(ci) if ci else None,
        "class_names": names,
        "confusion_matrix": confusion_matrix(
            y_true, y_pred, labels=list(range(len(names)))
        ).tolist(),
        "per_class": _per_class(names, y_true, y_pred),
        "misclassified_total": total,
        "misclassified": missed,
        "test": _test(model, dataset, study.user_attrs.get("data") or {}),
        "without_leaked": _without_leaked(
            dataset.val, dataset.source, y_true, y_pred, leaked or set()
        ),
        "split": {"val_fraction": val_fraction, "seed": seed, "fingerprint": dataset.fingerprint},
    }
