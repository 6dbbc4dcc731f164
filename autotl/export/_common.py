"""What every part of the export shares: file names, tolerances, the result and error types, image helpers.

The formats themselves (which files, how written and read back) are rows of the table in ``_table``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotl.errors import AutotlError, UsageError

#: Max |probability difference| allowed for float formats.
FLOAT_TOLERANCE = 1e-4
#: Min share of images on which a quantized model's top-1 class is the Keras model's.
INT8_MIN_AGREEMENT = 0.98
REPRESENTATIVE_IMAGES = 100  # training images that calibrate the int8 model
PARITY_IMAGES = 256  # at most this many validation images are compared (evenly spaced)
#: The model's val loss against the search's record (float32 noise is ~1e-7).
REPRODUCE_LOSS_ATOL, REPRODUCE_LOSS_RTOL = 1e-4, 1e-3

KERAS_FILE = "model.keras"
SAVEDMODEL_DIR = "savedmodel"
TFLITE_FILE = "model.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_int8.onnx"
LABELS_FILE = "labels.txt"
CARD_FILE = "MODEL_CARD.md"
PARITY_FILE = "parity.json"
#: What every export writes besides its formats' files (the formats' own are in the table, ``_table``).
COMMON_FILES = (LABELS_FILE, CARD_FILE, PARITY_FILE)

Predict = Callable[[Sequence[np.ndarray]], np.ndarray]


class ExportParityError(AutotlError):
    """An exported format does not predict what the Keras model predicts; the message names it and the numbers.

    ``parity`` is the parity record so far, with the failure (what ``parity.json`` holds), or None.
    """

    def __init__(self, message: str, parity: Optional[dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.parity = parity


@dataclass
class ExportResult:
    out_dir: Path
    trial: int
    class_names: list[str]
    files: dict[
        str, Path
    ]  # each format written by its table name, then "labels", "model_card", "parity"
    parity: dict[str, Any]
    input_size: tuple[int, int]
    warnings: list[str] = field(default_factory=list)
    #: The ensemble or TTA model exported instead of ``trial``'s own (``export(ensemble=..., tta=...)``), or None.
    variant: Optional[dict[str, Any]] = None
    #: Each format registered in MLflow's model registry (``Run.export(mlflow=URI)``): format -> version.
    registered: dict[str, str] = field(default_factory=dict)


def _quiet() -> None:
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", module="keras")
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _by_shape(
    images: Sequence[np.ndarray], run: Callable[[np.ndarray], np.ndarray], n_out: int
) -> np.ndarray:
    """``run`` on batches of equal-size images (the model's Resizing needs one size per batch), in input order."""
    out = np.zeros((len(images), n_out), dtype=np.float32)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(np.shape(im)), []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), 32):
            chunk = idx[start : start + 32]
            out[chunk] = run(np.stack([np.asarray(images[i]) for i in chunk]))
    return out


def _input_size(model: Any) -> tuple[int, int]:
    """The backbone's input size, read from the model's ``resize`` layer."""
    try:
        cfg = model.get_layer("resize").get_config()
        return int(cfg["height"]), int(cfg["width"])
    except Exception:
        raise UsageError(
            f"model {getattr(model, 'name', '?')} has no 'resize' layer; only models built by autotl (autotl.training.model.assemble) can be exported"
        ) from None


def _read_labels(path: Path) -> list[str]:
    names = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n]


def _tf_variables(model: Any) -> list[Any]:
    """The model's ``tf.Variable`` objects, for a ``tf.Module`` to track explicitly (as ``keras.export.ExportArchive`` does).

    A Keras 3 model held as a module attribute is not enough for the TFLite
    converter: it then keeps the weights as uninitialised resource variables
    (VAR_HANDLE/READ_VARIABLE ops) and the .tflite file outputs NaN.
    """
    return [getattr(v, "value", v) for v in model.variables]
