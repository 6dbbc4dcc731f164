"""Objectives, deploy costs and the test split, measured on this machine.

1. The Pareto front of validation accuracy against TFLite latency: the default
   space (its backbones that have weights here), searching ``[accuracy,
   latency_ms]``, latency measured by autotl with ``--threads`` interpreter threads.
2. The chosen single model's test score: the default space searching accuracy
   alone, with ``test_fraction`` of the training images held out, on a data
   folder and on the digits sample; the test score is measured once, after the
   search, next to the validation score that chose the model.

    AUTOTL_WEIGHTS_DIR=../shared/weights python benchmarks/objectives.py [--trials 20] [--threads 1]

Every run folder is kept under ``--out`` (report.html shows the front); the
figures are printed as Markdown tables and written to ``--out/objectives.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent


def load(overrides: dict[str, Any]) -> Any:
    from autotl.engine.space import load_space

    space, _ = load_space("default", overrides)
    return space


def search(out: Path, space: Any, trials: int, data: str | None, sample: str | None) -> Any:
    import autotl

    start = time.perf_counter()
    run = autotl.search(data, sample=sample, out=out, space=space, trials=trials)
    run.seconds = time.perf_counter() - start
    return run


def front_table(run: Any) -> dict[str, Any]:
    """Every complete trial of the accuracy/latency study, the front marked, and the deploy settings."""
    record = json.loads((run.path / "report.json").read_text())
    costs = json.loads((run.path / "deploy_costs.json").read_text())
    rows = [
        {
            "trial": p["number"],
            "backbone": p["backbone"],
            "head": p["head_width"],
            "val_accuracy": p["values"]["accuracy"],
            "latency_ms": p["values"]["latency_ms"],
            "front": p["front"],
        }
        for p in record["pareto"]["points"]
    ]
    shapes = [
        {
            "backbone": e["backbone"],
            "head": e["head_width"],
            "latency_ms": e["metrics"]["latency_ms"],
            "p10_ms": e["latency"]["p10_ms"],
            "p90_ms": e["latency"]["p90_ms"],
            "size_mb": e["metrics"]["size_mb"],
            "params": e["metrics"]["params"],
            "threads": e["latency"]["threads"],
            "runs": e["latency"]["runs"],
        }
        for e in costs.values()
    ]
    return {
        "rows": rows,
        "shapes": sorted(shapes, key=lambda s: (s["backbone"], s["head"])),
        "seconds": run.seconds,
    }


def test_table(run: Any) -> dict[str, Any]:
    record = json.loads((run.path / "report.json").read_text())
    best, test = record["summary"]["best"], record["evaluation"]["test"]
    data = record["summary"]["data"]
    return {
        "trial": best["number"],
        "backbone": best["params"]["backbone"],
        "val_accuracy": best["val_accuracy"],
        "val_ci95": best["ci95"],
        "val_images": data["val_images"],
        "test_accuracy": test["accuracy"],
        "test_ci95": test["ci95"],
        "test_images": test["images"],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "train_images": data["train_images"],
        "seconds": run.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared/data/hymenoptera"))
    parser.add_argument("--out", default="runs/bench-objectives")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--only", choices=["front", "test"], help="run one part")
    args = parser.parse_args()
    out = Path(args.out)
    name = Path(args.data).name
    results: dict[str, Any] = {"load": os.getloadavg(), "cpus": os.cpu_count()}
    if args.only in (None, "front"):
        space = load(
            {"objectives": ["accuracy", "latency_ms"], "deploy": {"threads": args.threads}}
        )
        run = search(out / f"{name}-front", space, args.trials, args.data, None)
        results["front"] = front_table(run)
    if args.only in (None, "test"):
        space = load({"test_fraction": args.test_fraction})
        results["test"] = {
            name: test_table(search(out / f"{name}-test", space, args.trials, args.data, None)),
            "digits": test_table(search(out / "digits-test", space, args.trials, None, "digits")),
        }
    results["load_after"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "objectives.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
