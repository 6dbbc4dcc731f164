"""The TFLite latency measurement: the real interpreter, a fixed thread count, warm-up, the median of N runs."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_tflite(registry) -> dict[str, bytes]:
    """The tiny backbone with a head, converted as export converts it: float, and int8."""
    from autotl.export._tflite import convert
    from autotl.training.model import assemble, build_head

    spec = registry.backbone("tiny")
    model = assemble(spec, spec.build((32, 32, 3), None), build_head(3, 8, 0.0))
    calibration = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    return {"float": convert(model, (32, 32)), "int8": convert(model, (32, 32), calibration)}


def test_median_and_spread_with_the_settings_they_were_measured_with(tiny_tflite, tmp_path) -> None:
    from autotl.export import measure_tflite_latency

    r = measure_tflite_latency(tiny_tflite["float"], threads=2, warmup=3, runs=15)
    assert 0 < r["min_ms"] <= r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert np.isfinite([r["median_ms"], r["p90_ms"]]).all()
    assert (r["threads"], r["warmup"], r["runs"]) == (2, 3, 15)
    assert r["input_shape"] == [1, 32, 32, 3] and r["input_dtype"] == "float32"
    assert "tf.lite" in r["runtime"] or "litert" in r["runtime"]
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(tiny_tflite["int8"])
    q = measure_tflite_latency(path, runs=5)  # a file works too; an int8 model takes uint8 pixels
    assert q["input_dtype"] == "uint8" and q["median_ms"] > 0 and q["threads"] == 1


def test_nonsense_settings_are_refused(tiny_tflite) -> None:
    from autotl.export import measure_tflite_latency

    for kwargs in ({"threads": 0}, {"runs": 0}, {"warmup": -1}):
        with pytest.raises(ValueError, match="need threads"):
            measure_tflite_latency(tiny_tflite["float"], **kwargs)
