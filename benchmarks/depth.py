"""Fine-tuning depth: the default space (which widens ``unfreeze_blocks`` when the data asks) against
today's fixed range and the best hand-widened range, side by side, at equal wall time, on test images
the search never sees.

Spaces (each the default space, ``search_spaces/default.yaml``, with one change):

``today``
    ``phase2.unfreeze_blocks`` 0..3 and no ``deepen``: the default space before issue #24.
``default``
    the default space as shipped: 0..3, widened to ``deepen.high`` when the evidence says so
    (:mod:`autotl.engine.depth`).
``wide``
    the hand-widened space: ``unfreeze_blocks`` 0..8 from the first trial, no ``deepen``.

Sets (``benchmarks/_datasets.py``): hymenoptera (close to ImageNet), digits (scanned 8x8
digits, far from it), rotations (the hymenoptera photos turned by 0/90/180/270 degrees, one class
per angle: far from it).  Every space holds out the same ``--test-fraction`` of each class's
training images (a seeded hash of its name), so the test images are the same across spaces.

Each search runs in a fresh process (``autotl.search`` with ``trials`` and ``timeout``, its own
run folder and feature cache), timed from its start to its end, report and evaluation included.

    python benchmarks/depth.py --sets hymenoptera,digits,rotations --spaces today,default,wide \\
        --trials 20 --timeout 150

Results go to ``ROOT/results/<set>-<space>.json`` (default ROOT /tmp/autotl-depth; a result there is
reused unless ``--again``), and a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _datasets import WEIGHTS, search_data

HERE = Path(__file__).resolve().parent
DEFAULT_SPACE = HERE.parent / "search_spaces" / "default.yaml"

SEARCH = """
import collections, json, sys, time
start = time.perf_counter()
import autotl
kwargs, out, space, trials, timeout = json.loads(sys.argv[1])
run = autotl.search(**kwargs, out=out, space=space, trials=trials, timeout=timeout, report=True)
wall = time.perf_counter() - start
report = json.loads((run.report_paths or run.report())["json"].read_text())
test = report["evaluation"]["test"]
trials_ = [t for t in run.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
depths = collections.Counter(t.params.get("unfreeze_blocks") for t in trials_)
best = run.best_trial
print(json.dumps({
    "wall_seconds": round(wall, 1),
    "trials": len(trials_),
    "test": {k: test.get(k) for k in ("images", "correct", "accuracy", "ci95")},
    "best": {"params": best.params, "val_accuracy": best.user_attrs["metrics"]["val_accuracy"],
             "phase2_kept": best.user_attrs.get("phase2_kept")},
    "depths": {str(k): v for k, v in sorted(depths.items(), key=lambda kv: (kv[0] is None, kv[0]))},
    "deepened": run.study.user_attrs.get("depth"),
    "depth_stop": run.study.user_attrs.get("depth_stop"),
    "phase1_best_val_accuracy": max(
        (max(t.user_attrs["history"]["phase1"]["val_accuracy"]) for t in trials_), default=None),
}))
"""


def space_file(kind: str, root: Path, test_fraction: float, seed: int = 0) -> Path:
    """The default space with ``kind``'s change (and the test split and seed), written under ``root``."""
    raw = yaml.safe_load(DEFAULT_SPACE.read_text())
    raw["test_fraction"] = test_fraction
    raw["seed"] = seed
    p2 = raw.setdefault("phase2", {})
    if kind == "today":
        p2["unfreeze_blocks"] = {"low": 0, "high": 3}
        p2.pop("deepen", None)
    elif kind == "wide":
        p2["unfreeze_blocks"] = {"low": 0, "high": 8}
        p2.pop("deepen", None)
    elif kind != "default":
        raise SystemExit(f"unknown space {kind!r}; choose from today, default, wide")
    path = root / "spaces" / f"{kind}{_suffix(seed)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _suffix(seed: int) -> str:
    """Seed 0's files keep the names they had before ``--seeds`` (its results are reused)."""
    return f"-seed{seed}" if seed else ""


def run_one(name: str, kind: str, args: argparse.Namespace, seed: int = 0) -> dict:
    """One search of set ``name`` in space ``kind`` with the space's ``seed``, in a fresh process; its result
    (kept in ROOT/results)."""
    root = Path(args.root)
    result_file = root / "results" / f"{name}-{kind}{_suffix(seed)}.json"
    if result_file.is_file() and not args.again:
        return json.loads(result_file.read_text())
    out = root / "runs" / f"{name}-{kind}{_suffix(seed)}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    kwargs = {**search_data(name, root / "data"), "weights_dir": WEIGHTS}
    payload = [kwargs, str(out), str(space_file(kind, root, args.test_fraction, seed))]
    payload += [args.trials, args.timeout or None]
    env = {**os.environ, "AUTOTL_WEIGHTS_DIR": WEIGHTS}
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", SEARCH, json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{name}/{kind} failed:\n{done.stderr[-3000:]}")
    result = {
        "set": name,
        "space": kind,
        "seed": seed,
        "process_seconds": round(time.perf_counter() - began, 1),
        **json.loads(done.stdout.strip().splitlines()[-1]),
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=2))
    return result


def _row(r: dict) -> str:
    t = r["test"]
    low, high = t["ci95"]
    deepened = r.get("deepened") or {}
    when = f"after trial {deepened['after_trial']}" if deepened else "-"
    if r.get("depth_stop"):
        when += f", stopped at deepen.cost after {r['depth_stop']['trials']}"
    depths = " ".join(f"{k}:{v}" for k, v in r["depths"].items())
    return (
        f"| {r['set']} | {r['space']} | {r.get('seed', 0)} | {t['accuracy']:.4f} ({t['correct']}/{t['images']}) "
        f"[{low:.3f}, {high:.3f}] | {r['wall_seconds']:.0f} | {r['trials']} | "
        f"{r['best']['params'].get('backbone')} / {r['best']['params'].get('unfreeze_blocks')} | "
        f"{r['phase1_best_val_accuracy']:.3f} | {when} | {depths} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="hymenoptera,digits,rotations")
    parser.add_argument("--spaces", default="today,default,wide")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--timeout",
        type=float,
        default=150.0,
        help="seconds, every search alike (0: none, the trial budget alone ends each search)",
    )
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--root", default="/tmp/autotl-depth")
    parser.add_argument("--again", action="store_true", help="run searches whose result exists")
    parser.add_argument(
        "--seeds", default="0", help="the space's seed, one search per seed and cell (0,1,2: three)"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        "| set | space | seed | test accuracy (95% CI) | wall s | trials | best backbone / blocks "
        "| best frozen val acc | widened | trials by unfreeze_blocks |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.sets.split(","):
        for seed in seeds:  # seed-major: a cut-short run still has every space of its first seeds
            for kind in args.spaces.split(","):
                results.append(run_one(name, kind, args, seed))
                print(_row(results[-1]), flush=True)
    if len(seeds) > 1:
        print(_summary(results))


def _summary(results: list[dict]) -> str:
    """Per set and space, over the seeds: the test images right (mean, and each seed's) and the mean wall."""
    lines = ["", "| set | space | seeds | mean test images right | per seed | mean wall s |"]
    lines.append("|---|---|---|---|---|---|")
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        cells.setdefault((r["set"], r["space"]), []).append(r)
    for (name, kind), rs in cells.items():
        right = [r["test"]["correct"] for r in rs]
        lines.append(
            f"| {name} ({rs[0]['test']['images']}) | {kind} | {len(rs)} | {sum(right) / len(rs):.1f} | "
            f"{' '.join(map(str, right))} | {sum(r['wall_seconds'] for r in rs) / len(rs):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
