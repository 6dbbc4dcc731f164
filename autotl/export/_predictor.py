"""``load_predictor``: any model autotl writes, as ``predict(images) -> probabilities`` (what ``autotl predict`` uses)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autotl.errors import UsageError, first_line
from autotl.export._common import LABELS_FILE, Predict, _quiet, _read_labels
from autotl.export._table import formats, recognise, titles
from autotl.run.folder import RunFolder


def load_predictor(
    path: str | os.PathLike[str], class_names: Sequence[str] | None = None
) -> tuple[Predict, list[str]]:
    """``(predict, class_names)`` for any model autotl writes; ``predict(list of uint8 HxWx3 arrays)`` gives float32 ``[n, classes]``.

    ``path`` may be a run folder (its ``best_model.keras``), an export folder (its
    first format in table order: ``model.keras`` when there is one) or a file or folder of any format in the export table (a
    ``.keras`` file, a SavedModel folder, a ``.tflite`` or ``.onnx`` file, ...).  Class names
    come from the format itself (a SavedModel's ``assets/labels.txt``), else from
    ``classes.json`` or ``labels.txt`` beside the model, unless ``class_names``
    gives them.
    """
    _quiet()
    p = Path(path)
    fmt = recognise(p)
    if fmt is None:
        return load_predictor(_model_in(p), class_names)
    if fmt.requires is not None:
        fmt.requires()  # a missing optional extra is said as such
    try:
        loaded = fmt.load(p)
    except Exception as exc:
        raise UsageError(
            f"cannot load {p} as {fmt.title} ({first_line(exc)[:200]}); "
            f"pass {fmt.title} written by `autotl export`"
        ) from None
    if class_names is not None:
        names = list(class_names)
    else:
        names = loaded.class_names or _names_beside(p)
    return _checked(loaded.predict, names, p), names


def _model_in(p: Path) -> Path:
    """The model file a run folder or an export folder holds; a one-line UsageError for anything else."""
    what = f"pass a run folder, an export folder, {titles()}"
    if p.is_dir():
        run = RunFolder(p)
        for model in (run.best_model(), *(p / f.main for f in formats())):
            if recognise(model) is not None:
                return model
        if run.run_file.is_file() or run.study_db.is_file():
            raise UsageError(
                f"no model at {run.best_model()}; pass a run folder whose search finished a trial, or a .keras file"
            )
        raise UsageError(f"{p} holds no model: {what}")
    if not p.exists():
        raise UsageError(f"no model at {p}; {what}")
    raise UsageError(f"{p} is not a model autotl can load; {what}")


def _checked(predict: Predict, names: list[str], where: Path) -> Predict:
    """``predict``, refusing outputs whose width is not the number of class names found beside the model."""

    def run(images: Sequence[np.ndarray]) -> np.ndarray:
        probs = predict(images)
        if probs.ndim != 2 or probs.shape[1] != len(names):
            raise UsageError(
                f"{where} predicts {probs.shape[-1]} classes but {len(names)} class names were found beside it; "
                "keep the model with the labels.txt/classes.json it was exported with"
            )
        return probs

    return run  # holds ``predict``, so whatever ``predict`` keeps alive (a SavedModel's ``.loaded``) stays alive


def _names_beside(model_file: Path) -> list[str]:
    folder = model_file.parent
    classes = RunFolder(folder).classes_file()  # a run's best model, or the keras-tuner engine's
    if classes.is_file():
        return [str(c) for c in json.loads(classes.read_text())]
    if (folder / LABELS_FILE).is_file():
        return _read_labels(folder / LABELS_FILE)
    raise UsageError(
        f"no classes.json or {LABELS_FILE} beside {model_file}; it names the classes the model predicts"
    )
