"""How long one image takes through a ``.tflite`` model: the deploy cost that ensembles and TTA multiply.

Measured as a phone would run it: TensorFlow Lite's interpreter (LiteRT when it
is installed) with a fixed number of threads, a few warm-up runs (the first
calls allocate and pack weights), then the median of ``runs`` single-image
calls.  The median, not the mean, because other processes on a shared machine
add long outliers.  The settings come back with the number, so a figure is
never quoted without them.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["measure_tflite_latency"]


def _interpreter_class() -> Any:
    try:  # LiteRT, the successor of tf.lite.Interpreter, when installed
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "ai_edge_litert"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tensorflow {tf.__version__}"


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """TFLite's C++ notes ("Created TensorFlow Lite XNNPACK delegate") go to fd 2; errors still raise."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def measure_tflite_latency(
    tflite_bytes_or_path: bytes | str | os.PathLike,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
) -> dict[str, Any]:
    """Median milliseconds of one single-image ``invoke()``, with the settings that produced it.

    The input is a fixed pseudo-random image of the model's input shape and
    dtype (the time of these models does not depend on the pixel values).
    Returns ``median_ms``, ``p90_ms``, ``min_ms``, ``threads``, ``warmup``,
    ``runs``, ``input_shape``, ``input_dtype`` and ``runtime``.
    """
    import numpy as np

    if threads < 1 or warmup < 0 or runs < 1:
        raise ValueError(
            f"threads and runs must be >= 1, warmup >= 0; got {threads}, {warmup}, {runs}"
        )
    Interpreter, runtime = _interpreter_class()
    source = tflite_bytes_or_path
    kwargs = (
        {"model_content": bytes(source)}
        if isinstance(source, (bytes, bytearray))
        else {"model_path": str(Path(source))}
    )
    with _quiet_stderr():
        it = Interpreter(num_threads=threads, **kwargs)
        it.allocate_tensors()
    inp = it.get_input_details()[0]
    shape = [max(1, int(s)) for s in inp["shape"]]
    dtype = np.dtype(inp["dtype"])
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        image = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    else:
        image = rng.uniform(0, 255, shape).astype(dtype)
    times = []
    for i in range(warmup + runs):
        it.set_tensor(inp["index"], image)
        start = time.perf_counter()
        it.invoke()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed * 1000.0)
    ms = np.asarray(times)
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(ms.min()),
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "input_shape": shape,
        "input_dtype": dtype.name,
        "runtime": runtime,
    }
