"""Deploy costs: measured once per backbone and head shape, cached in the run folder, safe for several workers."""

from __future__ import annotations

import json
import threading

import pytest

from autotl.backbones.weights import WeightsSource, resolve_weights
from autotl.run.folder import RunFolder

SETTINGS = {"format": "tflite", "quantize": "none", "threads": 1, "warmup": 2, "runs": 5}


@pytest.fixture
def tiny(registry):
    spec = registry.backbone("tiny")
    built: list[object] = []

    def make_base():
        built.append(1)
        return spec.build((32, 32, 3), None)

    return spec, resolve_weights(spec, WeightsSource("none")), make_base, built


FEATURES = 16  # the tiny backbone's last block has 16 channels


def head_params(width: int, classes: int = 3) -> int:
    return FEATURES * width + width + width * classes + classes


def test_measured_once_per_shape_and_cached_in_the_run_folder(tiny, tmp_path) -> None:
    from autotl.export import measure_deploy_costs

    spec, weights, make_base, built = tiny
    run = RunFolder(tmp_path)
    first = measure_deploy_costs(run, spec, weights, make_base, 8, 3, SETTINGS)
    again = measure_deploy_costs(run, spec, weights, make_base, 8, 3, SETTINGS)
    assert first == again and len(built) == 1  # the second answer came from deploy_costs.json
    assert first["params"] == spec.build((32, 32, 3), None).count_params() + head_params(8)
    assert first["latency_ms"] > 0 and 0 < first["size_mb"] < 1
    (entry,) = json.loads(run.deploy_costs_file.read_text()).values()
    assert entry["latency"]["threads"] == 1 and entry["latency"]["runs"] == 5
    assert entry["latency"]["median_ms"] == first["latency_ms"]
    assert entry["bytes"] / 1e6 == pytest.approx(first["size_mb"])
    assert (entry["backbone"], entry["head_width"], entry["classes"]) == ("tiny", 8, 3)
    assert entry["quantize"] == "none" and entry["machine"]["cpus"]


@pytest.mark.slow
def test_each_head_width_and_quantization_is_its_own_measurement(tiny, tmp_path) -> None:
    from autotl.export import measure_deploy_costs

    spec, weights, make_base, built = tiny
    run = RunFolder(tmp_path)
    first = measure_deploy_costs(run, spec, weights, make_base, 8, 3, SETTINGS)
    wider = measure_deploy_costs(run, spec, weights, make_base, 16, 3, SETTINGS)
    assert wider["params"] - first["params"] == head_params(16) - head_params(8)
    assert wider["size_mb"] > first["size_mb"]
    int8 = measure_deploy_costs(
        run, spec, weights, make_base, 8, 3, {**SETTINGS, "quantize": "int8"}
    )
    assert int8["size_mb"] < first["size_mb"] and int8["params"] == first["params"]
    assert len(built) == 3 and len(json.loads(run.deploy_costs_file.read_text())) == 3


def test_two_workers_asking_at_once_measure_once(tiny, tmp_path) -> None:
    from autotl.export import measure_deploy_costs

    spec, weights, make_base, built = tiny
    run = RunFolder(tmp_path)
    results: list[dict] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                measure_deploy_costs(run, spec, weights, make_base, 8, 3, SETTINGS)
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] and len(built) == 1


def test_deploy_format_onnx_times_the_onnx_runtime_model(tiny, tmp_path) -> None:
    from autotl.export import measure_deploy_costs, measure_onnx_latency
    from autotl.export._onnx import to_onnx
    from autotl.training.model import assemble, build_head

    spec, weights, make_base, built = tiny
    run = RunFolder(tmp_path)
    onnx = {**SETTINGS, "format": "onnx"}
    tflite = measure_deploy_costs(run, spec, weights, make_base, 8, 3, SETTINGS)
    fp32 = measure_deploy_costs(run, spec, weights, make_base, 8, 3, onnx)
    int8 = measure_deploy_costs(run, spec, weights, make_base, 8, 3, {**onnx, "quantize": "int8"})
    assert len(built) == 3  # each format and quantization is its own measurement
    entries = {
        (e["format"], e["quantize"]): e
        for e in json.loads(run.deploy_costs_file.read_text()).values()
    }
    assert entries["onnx", "none"]["latency"]["runtime"].startswith("onnxruntime")
    assert entries["onnx", "none"]["latency"]["input_dtype"] == "uint8"
    assert entries["tflite", "none"]["latency"]["runtime"].startswith(("tensorflow", "ai_edge"))
    assert fp32["params"] == int8["params"] == tflite["params"]
    # the size is the .onnx file's: an ONNX model of the same shape is that big, give or take names
    model = assemble(spec, make_base(), build_head(3, 8, 0.0))
    assert fp32["size_mb"] == pytest.approx(len(to_onnx(model)) / 1e6, rel=0.02)
    assert fp32["latency_ms"] > 0 and int8["latency_ms"] > 0
    timed = measure_onnx_latency(to_onnx(model), (32, 32), threads=1, warmup=1, runs=3)
    assert timed["runs"] == 3 and timed["input_shape"] == [1, 32, 32, 3]
    assert timed["p10_ms"] <= timed["median_ms"] <= timed["p90_ms"]
