"""What the data health check costs at 10,000 and 100,000 images, step by step, and its peak memory.

A search's report (and ``autotl doctor`` after a search) checks the data with
features the search already cached, so what is left to pay is the check's own
steps: the nearest-neighbour graph (exact, blockwise), duplicates and leakage,
the out-of-fold heads and cleanlab's label issues, and cleanlab's outlier
scores.  This measures exactly those, in a fresh process per size, on pooled
features shaped as MobileNet 0.25's cache holds them (256 channels, float16):
10 classes of clustered features with 1% near copies (half of them across
splits), 0.5% exact copies and 2% flipped labels planted, so every step has
real work to do.  It prints, per size, each step's seconds, the peak RSS of
the process, and how many planted copies and flipped labels were found; then
the same check again with the neighbour graph the first one stored (as a
report reads the graph the search's leakage check found).

    python benchmarks/health_scale.py [--sizes 10000,100000]

The features are synthetic (computing 100,000 images' features is the cache
build that ``benchmarks/scale.py`` measures: 291 s at 100,000 images); with
``--folder DATA --out RUN`` it instead runs ``autotl doctor`` on a real folder
(``benchmarks/scale.py`` builds one) in a fresh process, cold and then warm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
CHANNELS, CLASSES = 256, 10


def synthetic(n: int, seed: int = 0):
    """A ``Subject`` of ``n`` images without files, its float16 features, and what was planted."""
    import numpy as np

    from autotl.data.decoding import Checked
    from autotl.health import Subject

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    centres = rng.gamma(1.0, 1.0, (CLASSES, CHANNELS))
    features = np.empty((n, CHANNELS), np.float16)
    for s in range(
        0, n, 8192
    ):  # in slices, so building the data costs no more memory than checking it
        noise = rng.normal(0, 0.8, (len(labels[s : s + 8192]), CHANNELS)).astype(np.float32)
        features[s : s + 8192] = np.maximum(centres[labels[s : s + 8192]] + noise, 0)
    splits = rng.choice(["train", "val", "test"], n, p=[0.7, 0.2, 0.1])
    copies = rng.choice(n, (n // 100, 2), replace=False)  # (original, copy): 1% near copies
    features[copies[:, 1]] = features[copies[:, 0]] + rng.normal(0, 0.01, (len(copies), CHANNELS))
    labels[copies[:, 1]] = labels[copies[:, 0]]
    hashes = [f"{i:064x}" for i in range(n)]
    exact = rng.choice(np.setdiff1d(np.arange(n), copies), (n // 200, 2), replace=False)
    for a, b in exact:
        hashes[b], features[b], labels[b] = hashes[a], features[a], labels[a]
    flipped = rng.choice(
        np.setdiff1d(np.arange(n), np.concatenate([copies, exact]).ravel()), n // 50
    )
    labels[flipped] = (labels[flipped] + 1) % CLASSES
    rels = [f"{s}/class_{k}/img_{i:06d}.jpg" for i, (s, k) in enumerate(zip(splits, labels))]
    facts = [Checked(1, 1, h, None, 160, 160, "JPEG RGB") for h in hashes]
    subject = Subject(
        "/synthetic", [f"class_{k}" for k in range(CLASSES)], rels, rels, list(splits),
        labels.astype(np.int64), facts, [], "synthetic",
    )  # fmt: skip
    planted = {"near": copies.tolist(), "exact": exact.tolist(), "flipped": flipped.tolist()}
    return subject, features, planted


def one(n: int) -> dict:
    """The check's steps on ``n`` synthetic images, in this process: seconds, findings, recall."""
    import resource

    from autotl.health import Settings, find_findings

    subject, features, planted = synthetic(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds: dict[str, float] = {}
    again: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as graphs:
        began = time.perf_counter()
        found = find_findings(subject, features, Settings(), seconds, folder=Path(graphs))
        seconds["total"] = round(time.perf_counter() - began, 3)
        # the report's check after a search's: the same features, the graph read back
        began = time.perf_counter()
        same = find_findings(subject, features, Settings(), again, folder=Path(graphs))
        again["total"] = round(time.perf_counter() - began, 3)
    assert [(f.kind, f.path) for f in same] == [(f.kind, f.path) for f in found]
    pairs = {
        frozenset((f.path, f.other))
        for f in found
        if f.kind in ("leakage", "exact_duplicate", "near_duplicate")
    }
    issues = {f.path for f in found if f.kind == "label_issue"}
    flipped = {subject.rels[i] for i in planted["flipped"]}

    def recall(kind: str) -> float:
        got = sum(frozenset((subject.rels[a], subject.rels[b])) in pairs for a, b in planted[kind])
        return round(got / max(1, len(planted[kind])), 3)

    return {
        "images": n,
        "seconds": seconds,
        "seconds_again_graph_stored": again,
        "rss_before_check_mb": round(before / 2**20),
        "features_mb": round(features.nbytes / 2**20, 1),
        "recall_exact": recall("exact"),
        "recall_near": recall("near"),
        "label_issues": len(issues),
        "label_precision": round(len(issues & flipped) / max(1, len(issues)), 3),
        "label_recall": round(len(issues & flipped) / max(1, len(flipped)), 3),
        "other_pairs": len(pairs) - len(planted["near"]) - len(planted["exact"]),
    }


def fresh(args: list[str]) -> tuple[str, int]:
    """Run ``args`` in a fresh process: its stdout and its own peak RSS in bytes."""

    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        assert proc.returncode == 0, err.read()[-3000:]
    return out, usage.ru_maxrss * 1024


def doctor(folder: str, out: str, weights_dir: str | None) -> list[dict]:
    """``autotl doctor`` on a real folder, cold then warm (features cached), each in a fresh process."""
    rows = []
    for run in ("cold", "warm"):
        cmd = [sys.executable, "-m", "autotl", "doctor", folder, "--out", out]
        cmd += ["--weights-dir", weights_dir] if weights_dir else []
        began = time.perf_counter()
        _, peak = fresh(cmd)
        health = json.loads(open(os.path.join(out, "health", "health.json")).read())
        rows.append(
            {
                "run": run,
                "wall": round(time.perf_counter() - began, 1),
                "peak_rss_mb": round(peak / 2**20),
                "images": health["images"],
                "seconds": health["seconds"],
                "counts": health["counts"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child's part
    parser.add_argument("--folder", help="a real folder: run `autotl doctor` on it instead")
    parser.add_argument("--out", default="/tmp/autotl-health-scale")
    parser.add_argument("--weights-dir", default=os.environ.get("AUTOTL_WEIGHTS_DIR"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    if args.folder:
        doctor(args.folder, args.out, args.weights_dir)
        return
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        out, peak = fresh([sys.executable, __file__, "--one", str(n)])
        row = json.loads(out.strip().splitlines()[-1])
        row["peak_rss_mb"] = round(peak / 2**20)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
