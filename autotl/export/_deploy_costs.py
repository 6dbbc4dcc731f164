"""Deploy costs of a trial's model: its latency on this machine, file size and parameter count.

They depend on the backbone, its input size, the head's width and the class
count -- not on trained values -- so each shape is measured once per run
folder: the model is assembled (the pretrained base and a head of that shape),
converted with the export's own converter for the space's ``deploy.format``
(``tflite``: float, or full-integer when ``deploy.quantize`` is ``int8``;
``onnx``: tf2onnx, and ONNX Runtime's static int8 quantization), timed in that
format's runtime (the TFLite interpreter or ONNX Runtime,
:mod:`autotl.export._latency`) and its file measured.  The result goes to
``deploy_costs.json`` in the run folder, written atomically under a lock, so
several workers measure a shape once and never time two models at once.

Calibrating an int8 model here uses random pixels, not training images: the
quantization scales differ from an export's, the operations and their cost do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotl.run.folder import RunFolder

if TYPE_CHECKING:
    from autotl.spec import BackboneSpec

__all__ = ["measure_deploy_costs", "check_deploy_format", "shape_key", "CALIBRATION_IMAGES"]

CALIBRATION_IMAGES = 8  # random images that calibrate an int8 model for timing


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shape_key(
    spec: BackboneSpec,
    weights_id: str,
    head_width: int,
    n_classes: int,
    settings: Mapping[str, Any],
) -> tuple[str, dict[str, Any]]:
    """The cache key of a measurement, and what it is made of (everything the costs depend on)."""
    parts = {
        "backbone": spec.name,
        "weights": weights_id,
        "input_size": list(spec.input_size),
        "head_width": int(head_width),
        "classes": int(n_classes),
        **{k: settings[k] for k in ("format", "quantize", "threads", "warmup", "runs")},
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return digest, parts


def check_deploy_format(settings: Mapping[str, Any]) -> None:
    """Before a search measures deploy costs: a format whose optional extra is missing is one line now."""
    if settings.get("format") == "onnx":
        from autotl.export._onnx import require_onnx

        require_onnx()


def _converted(model: Any, size: tuple[int, int], settings: Mapping[str, Any]) -> bytes:
    """The model as the space's ``deploy.format`` writes it (int8: calibrated on random pixels)."""
    representative = None
    if settings["quantize"] == "int8":
        rng = np.random.default_rng(0)
        shape = (CALIBRATION_IMAGES, *size, 3)
        representative = rng.uniform(0.0, 255.0, shape).astype(np.float32)
    if settings["format"] == "onnx":
        from autotl.export._onnx import quantize_int8, to_onnx

        content = to_onnx(model)
        return content if representative is None else quantize_int8(content, representative)
    from autotl.export._tflite import convert

    return convert(model, size, representative)


def _timed(content: bytes, size: tuple[int, int], settings: Mapping[str, Any]) -> dict[str, Any]:
    from autotl.export._latency import measure_onnx_latency, measure_tflite_latency

    timing = {k: settings[k] for k in ("threads", "warmup", "runs")}
    if settings["format"] == "onnx":
        return measure_onnx_latency(content, size, **timing)
    return measure_tflite_latency(content, **timing)


def _measure(
    spec: BackboneSpec, base: Any, head_width: int, n_classes: int, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Assemble, convert and time one shape; the metrics and how they were measured."""
    from autotl.training.model import assemble, build_head

    start = time.perf_counter()
    model = assemble(spec, base, build_head(n_classes, head_width, 0.0))
    size = (int(spec.input_size[0]), int(spec.input_size[1]))
    content = _converted(model, size, settings)
    latency = _timed(content, size, settings)
    metrics = {
        "latency_ms": latency["median_ms"],
        "size_mb": len(content) / 1e6,
        "params": float(model.count_params()),
    }
    return {
        "metrics": metrics,
        "latency": latency,
        "bytes": len(content),
        "seconds": round(time.perf_counter() - start, 3),
        "measured": time.time(),
        "machine": {
            "node": platform.node(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
    }


def measure_deploy_costs(
    run: RunFolder,
    spec: BackboneSpec,
    weights: Any,
    make_base: Callable[[], Any],
    head_width: int,
    n_classes: int,
    settings: Mapping[str, Any],
) -> dict[str, float]:
    """``latency_ms``, ``size_mb`` (10^6 bytes) and ``params`` of a model of this shape, from the run
    folder's ``deploy_costs.json`` or measured now (``make_base()`` gives the pretrained base; it is
    called only on a miss).  ``settings`` is the space's ``deploy`` (format, quantize, threads, warmup, runs).
    """
    key, parts = shape_key(
        spec, weights.sha256 or weights.origin, head_width, n_classes, dict(settings)
    )
    with _locked(run.deploy_costs_lock):
        table = _read(run.deploy_costs_file)
        if key not in table:
            table[key] = {**_measure(spec, make_base(), head_width, n_classes, settings), **parts}
            run.write_json(run.deploy_costs_file, table)
    return dict(table[key]["metrics"])


def _read(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
