"""Classifying image files with any model autotl writes (a run's best model or any exported format)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

__all__ = ["predict_files", "predict_any", "Prediction", "PREDICT_CHUNK"]

PREDICT_CHUNK = (
    64  # images decoded and predicted together (bounded memory: at most 1024 px a side each)
)
#: ``(file, class, probability)``; an unreadable file gives ``(file, reason, None)``.
Prediction = tuple[str, str, Optional[float]]  # (file, class, probability) or (file, reason, None)


def predict_files(
    predict: Any, class_names: Sequence[str], files: Sequence[str | Path]
) -> list[Prediction]:
    """``(file, class, probability)`` per file, in order; an unreadable file gives ``(file, reason, None)``.

    ``predict`` is the ``predict(list of uint8 HxWx3 arrays) -> probabilities`` callable of
    :func:`autotl.export.load_predictor` (any exported format); the readable files go to it
    in one call per ``PREDICT_CHUNK`` files (decoded images held in memory at once).
    """
    import numpy as np

    from autotl.data.dataset import BadImage, decode_image

    out: list[tuple[str, str, Optional[float]]] = [("", "", None)] * len(files)
    for start in range(0, len(files), PREDICT_CHUNK):
        readable: list[int] = []
        pixels = []
        for i in range(start, min(start + PREDICT_CHUNK, len(files))):
            if Path(files[i]).is_dir():
                out[i] = (
                    str(files[i]),
                    "is a folder, not an image file (pass the images in it)",
                    None,
                )
                continue
            try:
                pixels.append(decode_image(files[i]))
            except BadImage as exc:
                out[i] = (str(files[i]), f"cannot read: {exc}", None)
                continue
            readable.append(i)
        if not readable:
            continue
        probs = np.asarray(predict(pixels))
        for i, p in zip(readable, probs):
            k = int(np.argmax(p))
            out[i] = (str(files[i]), class_names[k], float(p[k]))
    return out


def _not_a_file(path: str | Path) -> str | None:
    """What a path given as an image is, when it is no file at all (the decoder says the rest)."""
    p = Path(path)
    if p.is_dir():
        return "is a folder, not an image file (pass the images in it)"
    if not p.exists() and not p.is_symlink():
        return "no such file"
    return None


def predict_any(path: str | Path, files: Sequence[str | Path]) -> list[Prediction]:
    """:func:`predict_files` with whatever ``path`` holds: a run folder, an export folder, a ``.keras``
    file, a SavedModel folder or a ``.tflite`` file (class names from beside it)."""
    from autotl.export import load_predictor

    predict, names = load_predictor(path)
    return predict_files(predict, names, files)
