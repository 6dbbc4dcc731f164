"""Ensembles and flip TTA against the best single model, on test images the search never saw.

For each data set, a deterministic, stratified share of the images is held
out *before* the search (sha256 of each file's name or pixels, per class), so
neither the trials, their early stopping, the choice of the best trial nor the
ensemble selection ever sees them.  The search runs on the rest (its own
train/validation split), keeping the top K trials' layers; then
``Run.ensemble`` chooses the ensemble on the validation images and scores the
best single model, the ensemble and each with flip TTA on the held-out test
images, and times each through TFLite: converted once, then 1 thread, median
of 50 runs after 10 warm-up runs, in ``--rounds`` interleaved rounds (the
median of the rounds' medians is reported, and the fastest single run: on a
loaded machine the scheduler pre-empts runs longer than a time slice, which
inflates the median of slower models far more than their cost).

    python benchmarks/ensemble.py [--data hymenoptera,digits] [--trials 20] [--top-k 8] [--seed 0]

hymenoptera: its train/ folder is used as is; its val/ folder is halved,
one half validates the search, the other is the test set.  digits (the
bundled sample): 20% of the 1,797 images are the test set, the search splits
the rest 80/20.  Both backbones whose weights are in ``../shared/weights``.
Prints one table per data set and writes ``ensemble-<data>-seed<seed>.json``
in ``--out``.  Rerunning with the same ``--out`` resumes: finished trials and
cached predictions are reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("AUTOTL_SHARED", HERE.parent.parent / "shared"))
SPACE = {
    "backbones": ["mobilenet_v2-0.35", "mobilenet-0.25"],
    "head": {"width": [64, 128, 256], "dropout": {"low": 0.0, "high": 0.5}},
    "phase1": {"learning_rate": 1e-3, "epochs": 40, "patience": 4, "head_loss_threshold": 0.5},
    "phase2": {
        "unfreeze_blocks": {"low": 1, "high": 2},
        "learning_rate": {"low": 1e-5, "high": 1e-4, "log": True},
        "epochs": 5,
        "patience": 2,
    },
    "batch_size": 32,
    "seed": 0,
}


def _held_out(keys: list[str], labels: list[int], share: float, seed: int) -> set[int]:
    """Indices held out: per class, the ``share`` whose sha256(seed, key) is smallest."""
    out: set[int] = set()
    for c in sorted(set(labels)):
        mine = [i for i, y in enumerate(labels) if y == c]
        mine.sort(key=lambda i: hashlib.sha256(f"test{seed}\0{keys[i]}".encode()).digest())
        out.update(mine[: round(len(mine) * share)])
    return out


def _hymenoptera(root: Path, seed: int):
    """train/ as is; val/ halved into the search's val/ and the held-out test set (symlinks)."""
    from autotl.data.dataset import ImageSet

    src = SHARED / "data" / "hymenoptera"
    classes = sorted(p.name for p in (src / "val").iterdir() if p.is_dir())
    files = [
        (f, c) for c, name in enumerate(classes) for f in sorted((src / "val" / name).iterdir())
    ]
    test = _held_out([f.name for f, _ in files], [c for _, c in files], 0.5, seed)
    data = root / "data"
    if not data.exists():
        for name in classes:
            for part in ("train", "val"):
                (data / part / name).mkdir(parents=True)
            for f in sorted((src / "train" / name).iterdir()):
                (data / "train" / name / f.name).symlink_to(f)
        for i, (f, c) in enumerate(files):
            if i not in test:
                (data / "val" / classes[c] / f.name).symlink_to(f)
    held = [files[i] for i in sorted(test)]
    return data, ImageSet(np.array([c for _, c in held]), paths=[str(f) for f, _ in held])


def _digits(root: Path, seed: int):
    """20% held out; the rest written as PNG files in class folders (the search splits them itself)."""
    from PIL import Image

    from autotl.backbones.registry import get_registry
    from autotl.data.dataset import ImageSet

    images, labels, names = get_registry([]).sample("digits").load()
    keys = [hashlib.sha256(im.tobytes()).hexdigest() + f"-{i}" for i, im in enumerate(images)]
    test = _held_out(keys, [int(y) for y in labels], 0.2, seed)
    data = root / "data"
    if not data.exists():
        for i, (im, y) in enumerate(zip(images, labels)):
            if i not in test:
                (data / names[y]).mkdir(parents=True, exist_ok=True)
                Image.fromarray(im).save(data / names[y] / f"{i:04d}.png")
    held = sorted(test)
    return data, ImageSet(np.array([labels[i] for i in held]), arrays=[images[i] for i in held])


#: Each data set's builder: ``(root, seed) -> (search folder, held-out test ImageSet)``.
LOADERS = {"hymenoptera": _hymenoptera, "digits": _digits}


def _row(v) -> dict:
    def acc(s):
        return (
            None
            if s is None
            else {"accuracy": s.accuracy, "correct": s.correct, "n": s.images, "ci95": s.ci95}
        )

    lat = v.latency or {}
    return {
        "variant": v.name,
        "members": {str(k): round(w, 4) for k, w in v.members.items()},
        "val": acc(v.val),
        "test": acc(v.test),
        "tflite_median_ms": lat.get("median_ms"),
        "tflite_p90_ms": lat.get("p90_ms"),
        "tflite_min_ms": lat.get("min_ms"),
        "tflite_bytes": lat.get("tflite_bytes"),
    }


def _mcnemar(base: np.ndarray, other: np.ndarray) -> dict:
    """Exact McNemar test of two models on the same images: how many only ``other`` gets right ("gained"),
    how many only ``base`` ("lost"), and the two-sided binomial p-value of that split."""
    from math import comb

    gained, lost = int((other & ~base).sum()), int((base & ~other).sum())
    n = gained + lost
    p = min(1.0, 2 * sum(comb(n, i) for i in range(min(gained, lost) + 1)) / 2**n) if n else 1.0
    return {"gained": gained, "lost": lost, "p": p}


def _reference_rows(run, selection, test, bags: int = 20) -> tuple[list[dict], dict[str, dict]]:
    """Rows the product does not offer, for comparison, from the cached predictions (no model runs again):
    the plain mean of the top 3 and of the top K candidates, and selection bagged over ``bags`` halves; and
    every row's paired comparison with the best single model on the test images."""
    from autotl.ensemble import Score, caruana, mix
    from autotl.ensemble.predictions import input_sizes, largest, predictions, split_key

    study, folder = run.study, run.folder
    dataset, _ = folder.reload_dataset(study=study)
    by_number = {t.number: t for t in study.trials}
    cands = selection.candidates
    joint = dict.fromkeys(cands, largest(input_sizes([by_number[n] for n in cands])))
    models = {n: (lambda n=n: folder.trial_model(n)) for n in cands}  # never called: all cached
    n_classes, ttas = len(run.class_names), [None, "flip"]
    val_key = split_key("val", dataset.val, study.study_name, dataset.fingerprint)
    val = predictions(folder, models, dataset.val, val_key, n_classes, ttas, joint)
    test_key = split_key("test", test, study.study_name)
    on_test = predictions(folder, models, test, test_key, n_classes, ttas, joint)
    y_val, y_test = np.asarray(dataset.val.labels), np.asarray(test.labels)
    bagged = caruana.select(np.stack([val[(n, None)] for n in cands]), y_val, bags=bags, seed=0)
    choices = [
        ("mean of top 3", dict.fromkeys(cands[:3], 1.0)),
        (f"mean of top {len(cands)}", dict.fromkeys(cands, 1.0)),
        (f"selection bagged x{bags}", {cands[i]: bagged.weights[i] for i in bagged.members}),
    ]
    right = {
        (label, tta): mix(on_test, members, tta).argmax(1) == y_test
        for label, members in [*((v.base, v.members) for v in selection.variants), *choices]
        for tta in (None, "flip")
    }
    paired = {
        label + (f"+{tta}" if tta else ""): _mcnemar(right[("best", None)], r)
        for (label, tta), r in right.items()
    }
    rows = []
    for label, members in choices:
        for tta in (None, "flip"):
            v = Score.of(mix(val, members, tta), y_val)
            t = Score.of(mix(on_test, members, tta), y_test)
            total = sum(members.values())
            rows.append(
                {
                    "variant": label + ("+flip" if tta else ""),
                    "members": {str(k): round(w / total, 4) for k, w in members.items()},
                    "val": {
                        "accuracy": v.accuracy,
                        "correct": v.correct,
                        "n": v.images,
                        "ci95": v.ci95,
                    },
                    "test": {
                        "accuracy": t.accuracy,
                        "correct": t.correct,
                        "n": t.images,
                        "ci95": t.ci95,
                    },
                    "tflite_median_ms": None,
                }
            )
    return rows, paired


def _latency_rounds(run, selection, rounds: int) -> dict[str, dict]:
    """Each variant converted to float TFLite once, then timed in ``rounds`` interleaved rounds (1 thread,
    10 warm-up, median of 50 runs each), so load from other processes falls on every variant alike."""
    import keras

    from autotl.ensemble import variant_model
    from autotl.export import measure_tflite_latency
    from autotl.export._common import _input_size
    from autotl.export._tflite import convert

    tflite = {}
    for v in selection.variants:
        model = keras.saving.load_model(
            variant_model(run.folder, run.study, selection, v.name), safe_mode=True
        )
        tflite[v.name] = convert(model, _input_size(model))
    found: dict[str, list[dict]] = {name: [] for name in tflite}
    for _ in range(rounds):
        for name, data in tflite.items():
            found[name].append(measure_tflite_latency(data, threads=1, warmup=10, runs=50))
    return {
        name: {
            "median_of_medians_ms": float(np.median([r["median_ms"] for r in m])),
            "min_median_ms": min(r["median_ms"] for r in m),
            "min_ms": min(r["min_ms"] for r in m),
            "rounds": [r["median_ms"] for r in m],
            "bytes": len(tflite[name]),
        }
        for name, m in found.items()
    }


def search(name: str, args: argparse.Namespace) -> tuple[Path, object, object, float]:
    """``(folder, run, held-out test images, seconds)``: data set ``name``'s search keeping the top K trials'
    layers, in ``--out`` (reused when there: the search resumes)."""
    import autotl
    from autotl.engine.space import SearchSpace

    root = Path(args.out) / f"{name}-seed{args.seed}"
    data, test = LOADERS[name](root, args.seed)
    space = SearchSpace.model_validate({**SPACE, "seed": args.seed, "trials": args.trials})
    start = time.perf_counter()
    run = autotl.search(
        data,
        out=root / "run",
        space=space,
        trials=args.trials,
        keep_models=args.top_k,
        weights_dir=args.weights_dir,
        report=False,
    )
    return root, run, test, time.perf_counter() - start


def run_one(name: str, args: argparse.Namespace) -> dict:
    _, run, test, searched = search(name, args)
    start = time.perf_counter()
    selection = run.ensemble(
        args.top_k,
        tta="flip",
        test=test,
        test_source="held out before the search",
        bags=args.bags,
        latency=False,
        on_event=print,
    )
    ensembled = time.perf_counter() - start
    by_number = {t.number: t for t in run.study.trials}
    reference, paired = _reference_rows(run, selection, test)
    result = {
        "data": name,
        "seed": args.seed,
        "trials": args.trials,
        "top_k": args.top_k,
        "bags": args.bags,
        "search_seconds": searched,
        "ensemble_seconds": ensembled,
        "val_images": selection.variants[0].val.images,
        "test_images": len(test),
        "candidates": [
            {
                "trial": n,
                "backbone": by_number[n].params["backbone"],
                "val_accuracy": by_number[n].values[0],
            }
            for n in selection.candidates
        ],
        "members": {str(k): w for k, w in selection.members.items()},
        "rows": [_row(v) for v in selection.variants],
        "reference_rows": reference,
        "paired_with_best": paired,
        "latency": _latency_rounds(run, selection, args.rounds),
        "notes": selection.notes,
    }
    out = Path(args.out) / f"ensemble-{name}-seed{args.seed}.json"
    out.write_text(json.dumps(result, indent=2))
    _print(result)
    return result


def _print(r: dict) -> None:
    print(
        f"\n{r['data']} (seed {r['seed']}): {r['trials']} trials in {r['search_seconds']:.0f} s, ensemble "
        f"of the top {r['top_k']} in {r['ensemble_seconds']:.0f} s; {r['val_images']} val / {r['test_images']} test images"
    )
    print(
        "candidates: "
        + ", ".join(
            f"{c['trial']} {c['backbone']} {c['val_accuracy']:.4f}" for c in r["candidates"]
        )
    )
    print("| model | members | val acc | test acc (95% CI) | vs best: +/- (p) | TFLite ms |")
    for row in r["rows"] + r["reference_rows"]:
        t, v, lat = row["test"], row["val"], r["latency"].get(row["variant"])
        pair = r["paired_with_best"][row["variant"]]
        print(
            f"| {row['variant']} | {row['members']} | {v['accuracy']:.4f} | {t['accuracy']:.4f} "
            f"({t['correct']}/{t['n']}, {t['ci95'][0]:.3f}-{t['ci95'][1]:.3f}) | "
            f"+{pair['gained']}/-{pair['lost']} (p={pair['p']:.2f}) | "
            + (
                "-"
                if lat is None
                else f"median {lat['median_of_medians_ms']:.2f}, min {lat['min_ms']:.2f}, {lat['bytes'] / 1e6:.2f} MB"
            )
            + " |"
        )


def main(doc: str = __doc__, run=None, out: str = "/tmp/autotl-bench-ensemble") -> None:
    """Parse the options (shared with ``ensemble_refit.py``, which passes its own ``run``) and run each set."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--data", default="hymenoptera,digits")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--bags", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds (default 5)")
    p.add_argument("--weights-dir", default=str(SHARED / "weights"))
    p.add_argument("--out", default=out)
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in args.data.split(","):
        (run or run_one)(name.strip(), args)


if __name__ == "__main__":
    main()
