"""The Keras format: ``model.keras``, the very file the search scored, loadable with ``safe_mode=True``."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotl.export._common import KERAS_FILE, Predict, _by_shape
from autotl.export._format import Format, Loaded, WriteContext


def keras_predictor(model: Any) -> Predict:
    """A Keras model as ``predict(images)``: one call per batch of equal-size images."""
    import keras

    n = int(model.output_shape[-1])

    def predict(images: Sequence[np.ndarray]) -> np.ndarray:
        return _by_shape(
            images,
            lambda x: keras.ops.convert_to_numpy(model(x.astype(np.float32), training=False)),
            n,
        )

    return predict


def _write(model: Any, ctx: WriteContext) -> None:
    """A byte copy of the trial's file: what the search saved is what ships (and lineage finds it by hash)."""
    shutil.copyfile(ctx.model_file, ctx.folder / KERAS_FILE)


def _load(path: Path) -> Loaded:
    import keras

    return Loaded(predict=keras_predictor(keras.saving.load_model(path, safe_mode=True)))


def _usage(size: tuple[int, int], facts: Mapping[str, Any]) -> str:
    return (
        f"`{KERAS_FILE}`: `keras.saving.load_model(path, safe_mode=True)`; input float32 or uint8 RGB "
        "pixels 0..255, `[batch, height, width, 3]`, any size (one size per batch); output softmax "
        "probabilities."
    )


FORMAT = Format(
    name="keras",
    files=(KERAS_FILE,),
    write=_write,
    load=_load,
    recognises=lambda p: p.is_file() and p.suffix == ".keras",
    title="a .keras file",
    description="Keras 3 model, built-in layers only (loads where autotl is not installed)",
    usage=_usage,
)
