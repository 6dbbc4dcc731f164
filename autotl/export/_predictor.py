"""``load_predictor``: any model autotl writes, as ``predict(images) -> probabilities`` (what ``autotl predict`` uses)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotl.errors import UsageError, first_line
from autotl.export._common import KERAS_FILE, LABELS_FILE, Predict, _by_shape, _quiet, _read_labels
from autotl.export._savedmodel import savedmodel_predictor
from autotl.export._tflite import tflite_predictor
from autotl.runfolder import RunFolder


def keras_predictor(model: Any) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    import keras

    n = int(model.output_shape[-1])
    return lambda images: _by_shape(
        images, lambda x: keras.ops.convert_to_numpy(model(x.astype(np.float32), training=False)), n
    )


def load_predictor(
    path: str | os.PathLike, class_names: Sequence[str] | None = None
) -> tuple[Predict, list[str]]:
    """``(predict, class_names)`` for any model autotl writes; ``predict(list of uint8 HxWx3 arrays)`` gives float32 ``[n, classes]``.

    ``path`` may be a run folder (its ``best_model.keras``), an export folder (its
    ``model.keras``), a ``.keras`` file, a SavedModel folder or a ``.tflite`` file.
    Class names come from ``classes.json`` or ``labels.txt`` beside the model (for a
    SavedModel also its ``assets/labels.txt``), unless ``class_names`` gives them.
    """
    _quiet()
    p = Path(path)
    if p.is_dir():
        if (p / "saved_model.pb").is_file():
            labels = next(
                (f for f in (p / "assets" / LABELS_FILE, p.parent / LABELS_FILE) if f.is_file()),
                None,
            )
            if labels is None:
                raise UsageError(
                    f"SavedModel {p} has no assets/{LABELS_FILE} (and none beside it); export it with `autotl export`"
                )
            try:
                predict, _ = savedmodel_predictor(p)
            except Exception as exc:
                raise UsageError(
                    f"cannot load SavedModel {p} ({first_line(exc)[:200]}); it needs the serving_default and serving_bytes signatures `autotl export` writes"
                ) from None
            names = _read_labels(labels)
            return _checked(predict, names, p), names
        run = RunFolder(p)
        for model in (run.best_model(), p / KERAS_FILE):
            if model.is_file():
                return load_predictor(model)
        if run.run_file.is_file() or run.study_db.is_file():
            raise UsageError(
                f"no model at {run.best_model()}; pass a run folder whose search finished a trial, or a .keras file"
            )
        raise UsageError(
            f"{p} holds no model: pass a run folder, an export folder, a .keras file, a SavedModel folder or a .tflite file"
        )
    if not p.is_file():
        raise UsageError(
            f"no model at {p}; pass a run folder, an export folder, a .keras file, a SavedModel folder or a .tflite file"
        )
    if p.suffix not in (".keras", ".tflite"):
        raise UsageError(
            f"{p} is not a model autotl can load; pass a run folder, an export folder, a .keras file, a SavedModel folder or a .tflite file"
        )
    names = list(class_names) if class_names is not None else _names_beside(p)
    if p.suffix == ".keras":
        import keras

        try:
            model = keras.saving.load_model(p, safe_mode=True)
        except Exception as exc:
            raise UsageError(
                f"cannot load {p} ({first_line(exc)[:200]}); pass a .keras file written by autotl"
            ) from None
        predict = keras_predictor(model)
    else:
        try:
            predict, _ = tflite_predictor(p)
        except Exception as exc:
            raise UsageError(
                f"cannot load {p} ({first_line(exc)[:200]}); pass a .tflite file written by `autotl export`"
            ) from None
    return _checked(predict, names, p), names


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
