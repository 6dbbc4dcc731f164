"""Peak RSS over a long search: does memory stay flat across trials?

autotl runs every trial in one process (no process per trial): caches live
on disk and are read batch by batch, a trial's models are dropped when it ends, and
the phase-1 head trainer is traced once and compiled phase-2 models are reused rather than rebuilt.  This script runs a
50-trial search with fine-tuning in every trial and prints the process's RSS
after trials 1, 10, 25 and 50, and the growth per trial over the last 40.

    python benchmarks/memory.py [--data DIR] [--weights-dir DIR] [--trials 50]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
SPACE = """
backbones: [mobilenet_v2-0.35]
head: {width: [64, 128, 256], dropout: {low: 0.0, high: 0.5}}
phase1: {learning_rate: 1.0e-3, epochs: 20, patience: 3}
phase2: {unfreeze_blocks: {low: 1, high: 2}, learning_rate: {low: 1.0e-5, high: 1.0e-4, log: true}, epochs: 3, patience: 2}
"""


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(HERE.parent.parent / "shared" / "data" / "hymenoptera")
    )
    parser.add_argument("--weights-dir", default=os.environ.get("AUTOTL_WEIGHTS_DIR"))
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()

    import numpy as np
    import yaml

    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import load_folder
    from autotl.engine.optuna_engine import SearchConfig, run_search
    from autotl.engine.space import SearchSpace

    dataset = load_folder(args.data)
    samples: list[tuple[int, float]] = []

    def on_event(event: dict) -> None:
        if "finished" in event:
            samples.append((len(samples) + 1, rss_mb()))

    space = SearchSpace.model_validate(yaml.safe_load(SPACE))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SearchConfig(
            out=Path(tmp) / "run",
            space=space,
            trials=args.trials,
            weights=WeightsSource.parse(args.weights_dir),
        )
        start = time.perf_counter()
        study = run_search(cfg, get_registry(autoload=False), dataset, on_event)
        wall = time.perf_counter() - start
    fine_tuned = sum(1 for t in study.trials if t.user_attrs.get("history", {}).get("phase2"))
    print(f"{len(samples)} trials ({fine_tuned} fine-tuned) in {wall:.0f} s, one process")
    for n in (1, 10, 25, 50):
        if n <= len(samples):
            print(f"RSS after trial {n:3d}: {samples[n - 1][1]:7.0f} MB")
    for first in (10, len(samples) // 2):
        tail = [s for s in samples if s[0] >= first]
        if len(tail) > 2:
            slope = np.polyfit([s[0] for s in tail], [s[1] for s in tail], 1)[0]
            print(
                f"growth over trials {first}..{tail[-1][0]}: {slope:+.2f} MB per trial "
                f"(RSS ratio last/trial {first}: {tail[-1][1] / tail[0][1]:.3f})"
            )


if __name__ == "__main__":
    main()
