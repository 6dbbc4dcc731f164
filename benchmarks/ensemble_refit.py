"""Ensembles of the top K with refitted members: the same ensemble as with every member kept, at what cost.

A search keeps the layers of its ``--keep-models`` best trials only (default
3); ``autotl ensemble`` refits the other top-K trials from the feature cache
(:mod:`autotl.engine.refit`).  This measures, on the held-out test images of
``benchmarks/ensemble.py`` (same data sets, same space, same hold-out):

1. the search, keeping the top K trials' layers (the reference);
2. ``Run.ensemble`` of the top K on that run (every member kept);
3. the same run folder copied with every trial's layers but the best one's
   removed, and ``Run.ensemble`` of the top K again: K - 1 refits;
4. side by side: whether every refit passed its check, the largest weight
   difference between refitted and kept layers, whether the two ensembles
   chose the same members and score the same, the paired counts against the
   best single model (as ``benchmarks/ensemble.py`` reports them), and the
   refit time per member.

    python benchmarks/ensemble_refit.py [--data hymenoptera,digits,rotations] [--trials 20] [--top-k 8] [--seed 0]

``rotations`` (far from ImageNet: the class is the angle a photograph was
turned by) is built here from ``../shared/data/hymenoptera``.

Writes ``ensemble-refit-<data>-seed<seed>.json`` in ``--out``; rerunning with
the same ``--out`` reuses the search.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import ensemble
import numpy as np
from ensemble import SHARED, _held_out, _reference_rows, search


def _rotations(root: Path, seed: int):
    """Far from ImageNet: the hymenoptera photographs turned by 0, 90, 180 or 270 degrees, the class being
    the angle (the i-th photo of a split by ``(i % 4) * 90``, as the depth branch's
    ``benchmarks/_datasets.py`` builds it); train/ as is, val/ halved by hash into the search's val/ and
    the held-out test set."""
    from PIL import Image, ImageOps

    from autotl.data.dataset import ImageSet

    src, data, held = SHARED / "data" / "hymenoptera", root / "data", root / "test"
    rotated = []  # (split, class, file name, source)
    for split in ("train", "val"):
        for i, f in enumerate(sorted((src / split).rglob("*.jp*g"))):
            rotated.append((split, f"r{(i % 4) * 90:03d}", f"{f.parent.name}_{i:04d}.jpg", f))
    classes = sorted({c for _, c, _, _ in rotated})
    val = [r for r in rotated if r[0] == "val"]
    test = _held_out([n for _, _, n, _ in val], [classes.index(c) for _, c, _, _ in val], 0.5, seed)
    tested = {val[i][2] for i in test}
    if not data.exists():
        for split, cls, name, f in rotated:
            out = (held if name in tested and split == "val" else data / split) / cls / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(f) as im:
                angle = int(cls[1:])
                ImageOps.exif_transpose(im).convert("RGB").rotate(angle, expand=True).save(out)
    files = sorted((c, p) for c in classes for p in (held / c).iterdir())
    return data, ImageSet(
        np.array([classes.index(c) for c, _ in files]), paths=[str(p) for _, p in files]
    )


ensemble.LOADERS["rotations"] = _rotations


def _layers(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _weight_gap(kept: Path, refitted: Path) -> float:
    """The largest |difference| between two stored layer files' arrays (inf when their layers differ)."""
    a, b = _layers(kept), _layers(refitted)
    if a.keys() != b.keys():
        return float("inf")
    return max((float(np.abs(a[k] - b[k]).max()) for k in a if a[k].size), default=0.0)


def _ensemble(run, args, test) -> tuple[object, float]:
    start = time.perf_counter()
    selection = run.ensemble(
        args.top_k,
        tta="flip",
        test=test,
        test_source="held out before the search",
        latency=False,
        on_event=print,
    )
    return selection, time.perf_counter() - start


def _without_layers(src: Path, dst: Path, keep: int) -> Path:
    """A copy of run folder ``src`` as a search with ``--keep-models 1`` leaves it: only trial ``keep``'s
    layers (and no ensemble yet); the feature cache is the original's (run.json names it)."""
    from autotl.run.folder import RunFolder

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache", "ensemble", "artifacts"))
    kept = RunFolder(dst).trial_dir(keep)
    for trial in kept.parent.iterdir():
        if trial != kept:
            shutil.rmtree(trial)
    return dst


def run_one(name: str, args: argparse.Namespace) -> dict:
    import autotl
    from autotl.run.folder import RunFolder

    root, kept_run, test, searched = search(name, args)
    kept, kept_seconds = _ensemble(kept_run, args, test)
    best = kept.candidates[0]
    copy = _without_layers(root / "run", root / "run-keep1", best)
    refit_run = autotl.Run(copy, weights_dir=args.weights_dir)
    refit, refit_seconds = _ensemble(refit_run, args, test)
    _, paired = _reference_rows(refit_run, refit, test)
    gaps = {
        n: _weight_gap(
            *(RunFolder(f).trial_dir(n) / RunFolder.TRIAL_LAYERS for f in (root / "run", copy))
        )
        for n, r in refit.refits.items()
        if r["passed"]
    }
    result = {
        "data": name,
        "seed": args.seed,
        "trials": args.trials,
        "top_k": args.top_k,
        "search_seconds": searched,
        "test_images": len(test),
        "val_images": refit.variants[0].val.images,
        "kept": {"members": kept.members, "seconds": kept_seconds, "test": _tests(kept)},
        "refit": {"members": refit.members, "seconds": refit_seconds, "test": _tests(refit)},
        "refits": refit.refits,
        "max_weight_gap": gaps,
        "paired_with_best": paired,
        "notes": refit.notes,
    }
    out = Path(args.out) / f"ensemble-refit-{name}-seed{args.seed}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    _print(result)
    return result


def _tests(selection) -> dict[str, str]:
    return {v.name: f"{v.test.correct}/{v.test.images}" for v in selection.variants}


def _print(r: dict) -> None:
    refits = r["refits"].values()
    seconds = [x["seconds"] for x in refits if x["passed"]]
    print(
        f"\n{r['data']} (seed {r['seed']}): {r['trials']} trials in {r['search_seconds']:.0f} s; "
        f"{r['val_images']} val / {r['test_images']} test images; top {r['top_k']}"
    )
    print(
        f"refits: {sum(x['passed'] for x in refits)}/{len(refits)} passed, "
        f"{np.mean(seconds) if seconds else float('nan'):.1f} s each (max {max(seconds, default=0):.1f}), "
        f"largest weight gap to the kept layers {max(r['max_weight_gap'].values(), default=0):.2e}"
    )
    print(f"ensemble with every member kept:   {r['kept']['members']} test {r['kept']['test']}")
    print(f"ensemble with members refitted:    {r['refit']['members']} test {r['refit']['test']}")
    print("| model | vs best single model: +gained/-lost (p) |")
    for variant, pair in r["paired_with_best"].items():
        print(f"| {variant} | +{pair['gained']}/-{pair['lost']} (p={pair['p']:.2f}) |")


if __name__ == "__main__":
    ensemble.main(__doc__, run_one, "/tmp/autotl-bench-ensemble-refit")
