"""ONNX Runtime against SavedModel against TFLite, float and int8, on one exported model, in one run.

A search on ``../shared/data/hymenoptera`` (the ``fast`` space, MobileNetV2 0.35,
a quarter of the training images held out as the test split), one export in
every format (``keras,savedmodel,tflite,onnx --quantize int8``), then for each
format, loaded back as ``autotl predict`` loads it:

* top-1 agreement with the Keras model and max |probability difference| on the test split;
* accuracy on the test split (images no trial, no early stopping and no choice saw);
* file size;
* single-image latency: one uint8 (ONNX, SavedModel) or float/uint8 (TFLite) image
  at the model's input size, the same number of threads everywhere, the rounds
  interleaved (every format timed once per round) so the machine's load hits
  all of them alike; the median over rounds of each round's median.

    AUTOTL_SHARED=../shared AUTOTL_WEIGHTS_DIR=../shared/weights \\
        python benchmarks/formats.py --threads 1 --rounds 5 --runs 50

The figures are printed as a Markdown table and written to ``--out/formats.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SHARED = Path(
    os.environ.get("AUTOTL_SHARED", Path(__file__).resolve().parents[1].parent / "shared")
)
FILES = {
    "savedmodel": "savedmodel",
    "tflite": "model.tflite",
    "onnx": "model.onnx",
    "tflite_int8": "model_int8.tflite",
    "onnx_int8": "model_int8.onnx",
}


def bench_space() -> Any:
    """The fast space, MobileNetV2 0.35 alone, a quarter of the training images held out."""
    from autotl.engine.space import load_space

    return load_space("fast", {"backbones": ["mobilenet_v2-0.35"], "test_fraction": 0.25})[0]


def search_and_export(out: Path, space: Any, trials: int) -> tuple[Any, Any]:
    import autotl

    run = autotl.search(
        SHARED / "data" / "hymenoptera", out=out / "run", space=space, trials=trials
    )
    result = run.export("keras,savedmodel,tflite,onnx", out / "export", quantize="int8")
    return run, result


def test_split(space: Any) -> Any:
    """The test split the search held out (the same seeded choice of training images)."""
    from autotl.data.dataset import load_folder
    from autotl.data.holdout import add_test_split

    folder = SHARED / "data" / "hymenoptera"
    dataset = load_folder(folder, space.val_fraction, space.seed)
    return add_test_split(dataset, str(folder.resolve()), space.test_fraction, space.seed).test


def size_of(path: Path) -> int:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def scores(
    export_dir: Path, images: list[np.ndarray], labels: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Each format's agreement with the Keras model and accuracy on the test images, and its size."""
    from autotl.export import load_predictor

    keras_predict, _ = load_predictor(export_dir / "model.keras")
    reference = keras_predict(images)
    out = {
        "keras": {
            "accuracy": float((reference.argmax(1) == labels).mean()),
            "bytes": size_of(export_dir / "model.keras"),
        }
    }
    for name, file in FILES.items():
        predict, _ = load_predictor(export_dir / file)
        probs = predict(images)
        out[name] = {
            "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(probs - reference).max()),
            "accuracy": float((probs.argmax(1) == labels).mean()),
            "bytes": size_of(export_dir / file),
        }
    return out


def savedmodel_timer(path: Path, size: tuple[int, int]) -> Callable[[int, int], float]:
    """The median ms of ``runs`` single-image calls of the SavedModel's ``serving_default``."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (1, *size, 3)).astype(np.uint8))

    def timed(warmup: int, runs: int) -> float:
        for _ in range(warmup):
            signature(images=x)
        times = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            signature(images=x)["probabilities"].numpy()
            times.append((time.perf_counter_ns() - start) / 1e6)
        return statistics.median(times)

    timed.keep = signature  # type: ignore[attr-defined]
    return timed


def latencies(
    export_dir: Path, size: tuple[int, int], threads: int, rounds: int, runs: int
) -> dict[str, Any]:
    from autotl.export import measure_onnx_latency, measure_tflite_latency

    timers: dict[str, Callable[[], float]] = {
        "savedmodel": lambda: savedmodel(5, runs),
        "tflite": lambda: measure_tflite_latency(export_dir / FILES["tflite"], threads, 5, runs)["median_ms"],
        "onnx": lambda: measure_onnx_latency(export_dir / FILES["onnx"], size, threads, 5, runs)["median_ms"],
        "tflite_int8": lambda: measure_tflite_latency(export_dir / FILES["tflite_int8"], threads, 5, runs)["median_ms"],
        "onnx_int8": lambda: measure_onnx_latency(export_dir / FILES["onnx_int8"], size, threads, 5, runs)["median_ms"],
    }  # fmt: skip
    savedmodel = savedmodel_timer(export_dir / FILES["savedmodel"], size)
    per_round: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            per_round[name].append(timer())
    return {
        name: {"median_ms": statistics.median(v), "min_round_ms": min(v), "rounds_ms": v}
        for name, v in per_round.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-formats"))
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)  # the SavedModel's threads
    tf.config.threading.set_inter_op_parallelism_threads(1)
    chosen = bench_space()
    _, result = search_and_export(args.out, chosen, args.trials)
    test = test_split(chosen)
    images = [test.load(i) for i in range(len(test))]
    labels = np.asarray(test.labels)
    record = {
        "trial": result.trial,
        "test_images": len(images),
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "scores": scores(result.out_dir, images, labels),
        "latency": latencies(
            result.out_dir, result.input_size, args.threads, args.rounds, args.runs
        ),
        "load_average_after": os.getloadavg(),
    }
    (args.out / "formats.json").write_text(json.dumps(record, indent=2))
    print(table(record))


def table(record: dict[str, Any]) -> str:
    rows = [
        f"Test split: {record['test_images']} images; {record['threads']} thread(s); load average "
        f"{record['load_average'][0]:.1f} before, {record['load_average_after'][0]:.1f} after",
        "",
        "| format | top-1 agreement with Keras | max abs prob. diff | test accuracy | size | latency (median of round medians; fastest round) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    keras = record["scores"]["keras"]
    rows.append(
        f"| keras (reference) | | | {keras['accuracy']:.4f} | {keras['bytes'] / 1e6:.2f} MB | |"
    )
    for name in FILES:
        s, lat = record["scores"][name], record["latency"][name]
        rows.append(
            f"| {name} | {s['agreement']:.1%} | {s['max_abs_diff']:.1e} | {s['accuracy']:.4f} | "
            f"{s['bytes'] / 1e6:.2f} MB | {lat['median_ms']:.2f} ms ({lat['min_round_ms']:.2f}) |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
