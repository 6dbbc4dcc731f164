"""How well ``autotl doctor`` finds what was planted, how long it takes, and what excluding its findings buys.

For each real data set (hymenoptera from ../shared, scikit-learn's bundled digits, and patches of
scikit-learn's two bundled sample photographs), a corrupted copy is built: a clean test/ split held
out first (never corrupted), then in train/ and val/ a known share of labels flipped, exact copies,
re-encoded (JPEG quality 60), resized (half size) and cropped (90 %) copies of training images put
into val/ (leakage).  Then:

* ``autotl.doctor`` on it: precision and recall of the label issues against the flipped files, recall of
  the exact and of each kind of near copy, other findings, wall time (cold cache, then warm);
* ``autotl.search`` on it without and with ``exclude=issues.csv`` (its train and val rows: the test
  split stays whole): each best model on the same clean test images, paired per image (right by one
  and not the other), with the exact McNemar p-value.

    AUTOTL_SHARED=../shared AUTOTL_WEIGHTS_DIR=../shared/weights python benchmarks/doctor.py --root /tmp/doctor-bench

Results go to ``ROOT/doctor.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from _datasets import WEIGHTS, digits_items, hymenoptera_items, photo_patches_items
from _datasets import save as _save
from PIL import Image

COPIES = ("exact", "reencoded", "resized", "cropped")


#: The sets this benchmark corrupts (digits light on dark, as first measured here).
SOURCES = {
    "hymenoptera": hymenoptera_items,
    "digits": lambda: digits_items(dark_ink=False),
    "photo_patches": photo_patches_items,
}


def _h(text: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:8], 16) / 2**32


def _open(item: Image.Image | Path) -> Image.Image:
    return Image.open(item).convert("RGB") if isinstance(item, Path) else item


def _variant(kind: str, item: Image.Image | Path, target: Path) -> Path:
    im = _open(item)
    if kind == "exact":
        _save(item, target)
        return target
    if kind == "reencoded":
        target = target.with_suffix(".jpg")
        im.save(target, quality=60)
    elif kind == "resized":
        w, h = im.size
        factor = 2 if max(w, h) < 32 else 0.5  # 8 px digits grow, photographs shrink
        im.resize(
            (max(1, int(w * factor)), max(1, int(h * factor))), Image.Resampling.BILINEAR
        ).save(target.with_suffix(".png"))
        target = target.with_suffix(".png")
    else:  # cropped: 5 % off each side
        w, h = im.size
        dx, dy = max(1, round(w * 0.05)), max(1, round(h * 0.05))
        im.crop((dx, dy, w - dx, h - dy)).save(target.with_suffix(".png"))
        target = target.with_suffix(".png")
    return target


def build(source: dict[str, list], root: Path, seed: int, flip: float, copies: int) -> dict:
    """The corrupted folder and what was planted in it (relative paths)."""
    shutil.rmtree(root, ignore_errors=True)
    classes = sorted(source)
    planted: dict = {"flipped": [], **{k: [] for k in COPIES}}
    train: list[tuple[str, str, object]] = []
    for cls in classes:
        for name, item in source[cls]:
            u = _h(f"{cls}/{name}", seed)
            part = "test" if u < 0.2 else "val" if u < 0.4 else "train"
            if part == "test":
                _save(item, root / "test" / cls / name)
            else:
                target = cls
                if _h(f"flip/{cls}/{name}", seed) < flip:
                    target = classes[(classes.index(cls) + 1) % len(classes)]
                    planted["flipped"].append(f"{part}/{target}/{name}")
                _save(item, root / part / target / name)
                if part == "train":
                    train.append((f"train/{target}/{name}", cls, item))
    rng = np.random.default_rng(seed)
    originals = [t for t in train if t[0].startswith("train/") and t[0] not in planted["flipped"]]
    picks = rng.choice(
        len(originals), size=min(len(originals), copies * len(COPIES)), replace=False
    )
    for k, index in enumerate(picks):
        kind = COPIES[k % len(COPIES)]
        rel, cls, item = originals[index]
        target = _variant(
            kind, item, root / "val" / rel.split("/")[1] / f"copy_{kind}_{k:03d}_{Path(rel).name}"
        )
        planted[kind].append((rel, str(target.relative_to(root))))
    return planted


def score(health, planted: dict) -> dict:
    """Precision and recall of the label issues; recall of each kind of copy; other findings."""
    found = {f.path for f in health.of_kind("label_issue")}
    flipped = set(planted["flipped"])
    hits = found & flipped
    top = [f.path for f in health.of_kind("label_issue")][: len(flipped)]
    pairs = {
        frozenset((f.path, f.other))
        for k in ("leakage", "exact_duplicate", "near_duplicate")
        for f in health.of_kind(k)
    }
    out = {
        "flipped": len(flipped),
        "label_issues_found": len(found),
        "label_precision": len(hits) / len(found) if found else None,
        "label_recall": len(hits) / len(flipped) if flipped else None,
        "label_precision_at_flipped": len(set(top) & flipped) / len(flipped) if flipped else None,
        "counts": health.counts(),
        "seconds": health.seconds,
    }
    for kind in COPIES:
        got = sum(frozenset(p) in pairs for p in planted[kind])
        out[f"recall_{kind}"] = f"{got}/{len(planted[kind])}"
    planted_pairs = {frozenset(p) for k in COPIES for p in planted[k]}
    out["other_pairs"] = len(pairs - planted_pairs)
    return out


def search_accuracy(root: Path, out: Path, exclude: Path | None, trials: int) -> dict:
    """The search's best validation score, and its best model on each clean test image (right or not)."""
    import autotl

    run = autotl.search(
        root,
        out=out,
        space="fast",
        backbones=["mobilenet-0.25"],
        trials=trials,
        weights_dir=WEIGHTS,
        exclude=exclude,
    )
    files = sorted((root / "test").glob("*/*"))
    right = {
        str(Path(f).relative_to(root)): cls == Path(f).parent.name
        for f, cls, _ in run.predict(files)
    }
    return {
        "val_accuracy": run.best_value,
        "test_images": len(right),
        "test_correct": sum(right.values()),
        "test_accuracy": sum(right.values()) / len(right),
        "right": right,
    }


def paired(without: dict, excluded: dict) -> dict:
    """Both searches on the same test images: how many each got right that the other did not, and the
    exact McNemar test's p-value on those (the chance of so lopsided a split if neither were better)."""
    from scipy.stats import binomtest

    a, b = without.pop("right"), excluded.pop("right")
    assert a.keys() == b.keys(), "both searches must be scored on the same test images"
    only_without = sum(a[f] and not b[f] for f in a)
    only_excluded = sum(b[f] and not a[f] for f in a)
    discordant = only_without + only_excluded
    return {
        "images": len(a),
        "both_right": sum(a[f] and b[f] for f in a),
        "only_without_right": only_without,
        "only_excluded_right": only_excluded,
        "both_wrong": sum(not (a[f] or b[f]) for f in a),
        "mcnemar_p": binomtest(only_excluded, discordant).pvalue if discordant else 1.0,
    }


def train_val_rows(issues: Path, target: Path) -> Path:
    """``issues.csv``'s rows whose file is in train/ or val/: the test split stays whole, so both searches
    are scored on the same clean test images."""
    import csv

    with open(issues, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(target, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["path"])
        writer.writeheader()
        writer.writerows(r for r in rows if r["split"] != "test")
    return target


def main() -> None:
    import autotl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/autotl-doctor-bench")
    parser.add_argument("--sets", default="hymenoptera,digits,photo_patches")
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument(
        "--copies",
        type=int,
        default=8,
        help="copies of each kind (exact, re-encoded, resized, cropped)",
    )
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-search", action="store_true")
    args = parser.parse_args()
    root = Path(args.root)
    results = {"load_average_start": os.getloadavg(), "sets": {}}
    for name in args.sets.split(","):
        data = root / name / "data"
        planted = build(SOURCES[name](), data, args.seed, args.flip, args.copies)
        out = root / name / "doctor"
        shutil.rmtree(out, ignore_errors=True)
        began = time.perf_counter()
        health = autotl.doctor(data, out=out, weights_dir=WEIGHTS)
        cold = time.perf_counter() - began
        began = time.perf_counter()
        autotl.doctor(data, out=out, weights_dir=WEIGHTS)
        warm = time.perf_counter() - began
        entry = {
            "images": health.images,
            "backbone": health.backbone,
            "wall_cold": round(cold, 1),
            "wall_warm": round(warm, 1),
            **score(health, planted),
        }
        if not args.no_search:
            issues = train_val_rows(
                out / "health" / "issues.csv", out / "health" / "issues-train-val.csv"
            )
            entry["search_without"] = search_accuracy(
                data, root / name / "run-all", None, args.trials
            )
            entry["search_excluded"] = search_accuracy(
                data, root / name / "run-excluded", issues, args.trials
            )
            entry["test_paired"] = paired(entry["search_without"], entry["search_excluded"])
        results["sets"][name] = entry
        print(json.dumps({name: entry}, indent=1), flush=True)
        (root / "doctor.json").write_text(json.dumps(results, indent=2))  # each set as it is done
    results["load_average_end"] = os.getloadavg()
    (root / "doctor.json").write_text(json.dumps(results, indent=2))
    print(f"written {root / 'doctor.json'}")


if __name__ == "__main__":
    main()
