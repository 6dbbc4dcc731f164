"""``tflite_latency``: a ``.keras`` model converted as the TFLite format converts it, then timed."""

from __future__ import annotations

import os
from typing import Any

from autotl.export._common import _input_size, _quiet
from autotl.export._tflite import convert
from autotl.latency import measure_tflite_latency


def tflite_latency(
    model_file: str | os.PathLike, threads: int = 1, warmup: int = 10, runs: int = 50
) -> dict[str, Any]:
    """Median ms of one image through ``model_file`` as a float ``model.tflite`` (what export writes), with the
    settings (:func:`autotl.latency.measure_tflite_latency`) and the TFLite file's size."""
    import keras

    _quiet()
    model = keras.saving.load_model(model_file, safe_mode=True)
    tflite = convert(model, _input_size(model))
    return {**measure_tflite_latency(tflite, threads, warmup, runs), "tflite_bytes": len(tflite)}
