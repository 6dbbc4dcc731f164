"""How fast an exported model answers on this machine: the median single-image latency, measured honestly.

The model runs in the real TFLite interpreter (LiteRT's when installed, else
TensorFlow's ``tf.lite.Interpreter``, with its default XNNPACK delegate) with a
fixed number of threads.  One input image of the model's own shape and dtype
(random pixels: the arithmetic does not depend on them) is set, the model is
invoked ``warmup`` times untimed (first calls allocate and pack weights), then
``runs`` times, each timed on its own (``warmup`` is at least 1); the median is the figure, the spread is
recorded beside it.  Nothing else runs in between, but other processes on the
machine do: numbers from a busy machine are slower and noisier.

An ONNX model is timed the same way in ONNX Runtime (:func:`measure_onnx_latency`):
a CPU session with ``threads`` intra-op threads and one inter-op thread, one
uint8 image of the model's input size.

::

    from autotl.export import measure_tflite_latency

    measure_tflite_latency("deploy/model.tflite", threads=1)
    # {"median_ms": 4.1, "p10_ms": 4.0, "p90_ms": 4.6, "threads": 1, "runs": 30, ...}
    measure_onnx_latency("deploy/model.onnx", (224, 224), threads=1)
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

from autotl._stderr import stderr_silenced
from autotl.export._common import _input_size, _quiet
from autotl.export._tflite import convert

__all__ = ["measure_tflite_latency", "measure_onnx_latency", "tflite_latency", "WARMUP", "RUNS"]

WARMUP = 5  # untimed invocations first
RUNS = 30  # timed invocations; their median is the latency

Model = Union[bytes, str, os.PathLike[str]]


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """No "Created TensorFlow Lite XNNPACK delegate" line (C++, on file descriptor 2) and no deprecation warning."""
    with warnings.catch_warnings(), stderr_silenced():
        warnings.simplefilter("ignore")
        yield


def _interpreter(model: Model, threads: int) -> tuple[Any, str]:
    """The interpreter on ``model`` (bytes or a file) with ``threads`` threads, and which runtime it is."""
    content = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    try:  # LiteRT, the successor of tf.lite.Interpreter, when installed
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

        runtime = "ai_edge_litert"
    except ImportError:
        import tensorflow as tf

        Interpreter, runtime = tf.lite.Interpreter, f"tensorflow {tf.__version__} tf.lite"
    with _silenced():
        interpreter = Interpreter(model_content=bytes(content), num_threads=threads)
        interpreter.allocate_tensors()
    return interpreter, runtime


def _input(detail: dict[str, Any], seed: int) -> np.ndarray:
    """Random input of the model's shape and dtype (pixels 0..255 for a float model)."""
    rng = np.random.default_rng(seed)
    shape, dtype = [int(d) for d in detail["shape"]], np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    return rng.uniform(0.0, 255.0, shape).astype(dtype)


def _check(threads: int, warmup: int, runs: int) -> int:
    """The settings checked; ``warmup`` raised to 1 (the first call prepares the runtime)."""
    if threads < 1 or runs < 1 or warmup < 0:
        raise ValueError(
            f"need threads >= 1, runs >= 1, warmup >= 0; got {threads}, {runs}, {warmup}"
        )
    return max(warmup, 1)


def _timed(call: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    """``call`` ``warmup`` times untimed, then ``runs`` times each timed: the median and spread in ms."""
    with _silenced():  # a delegate may announce itself on the first call
        for _ in range(warmup):
            call()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    deciles = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {
        "median_ms": float(statistics.median(times)),
        "p10_ms": float(deciles[0]),
        "p90_ms": float(deciles[-1]),
        "min_ms": float(min(times)),
    }


def measure_tflite_latency(
    model: Model, threads: int = 1, warmup: int = WARMUP, runs: int = RUNS, seed: int = 0
) -> dict[str, Any]:
    """The median latency of one ``invoke`` of ``model`` (``.tflite`` bytes or file), in milliseconds.

    Returns ``median_ms`` with ``p10_ms``, ``p90_ms``, ``min_ms`` and the
    settings (``threads``, ``warmup``, ``runs``, input shape and dtype, the
    runtime), so a figure is never quoted without how it was measured.
    """
    warmup = _check(threads, warmup, runs)
    interpreter, runtime = _interpreter(model, threads)
    detail = interpreter.get_input_details()[0]
    x = _input(detail, seed)
    interpreter.set_tensor(detail["index"], x)
    return {
        **_timed(interpreter.invoke, warmup, runs),
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "input_shape": [int(d) for d in detail["shape"]],
        "input_dtype": np.dtype(detail["dtype"]).name,
        "runtime": runtime,
    }


def measure_onnx_latency(
    model: Model,
    size: tuple[int, int],
    threads: int = 1,
    warmup: int = WARMUP,
    runs: int = RUNS,
    seed: int = 0,
) -> dict[str, Any]:
    """The median latency of one image ``[1, h, w, 3]`` (uint8, ``size``) through ``model`` (``.onnx`` bytes or
    file) in ONNX Runtime, in milliseconds, with the same fields as :func:`measure_tflite_latency`."""
    from autotl.export._onnx import INPUT, require_onnx, session

    warmup = _check(threads, warmup, runs)
    require_onnx()
    import onnxruntime as ort

    content = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    sess = session(bytes(content), threads)
    x = np.random.default_rng(seed).integers(0, 256, (1, *size, 3)).astype(np.uint8)
    return {
        **_timed(lambda: sess.run(None, {INPUT: x}), warmup, runs),
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "input_shape": [1, *size, 3],
        "input_dtype": "uint8",
        "runtime": f"onnxruntime {ort.__version__}",
    }


def tflite_latency(
    model_file: str | os.PathLike[str], threads: int = 1, warmup: int = 10, runs: int = 50
) -> dict[str, Any]:
    """Median ms of one image through ``model_file`` as a float ``model.tflite`` (what export writes), with the
    settings (:func:`measure_tflite_latency`) and the TFLite file's size."""
    import keras

    _quiet()
    model = keras.saving.load_model(model_file, safe_mode=True)
    tflite = convert(model, _input_size(model))
    return {**measure_tflite_latency(tflite, threads, warmup, runs), "tflite_bytes": len(tflite)}
