"""Backbone screening: what it saves, and what it costs in quality.

Three parts, each run as a user would run a search (``autotl.search`` in a
fresh process per search, timed from the process's start):

``throughput``
    Each backbone's cache forward pass alone (pooled output, batches of 32,
    random weights, random pixels): images/s, the floor every cost is held to.

``cost``
    Synthetic data as in ``benchmarks/scale.py`` (10 classes of 160 px JPEGs)
    at each ``--sizes``, the default space's six backbones (the two with
    weights in ``../shared/weights`` real, the other four with random-valued
    weight files: the timing is the same), ``--trials`` phase-1-only trials
    (``two_stage`` trials = the budget, no block boundaries cached): time to
    the first trial and wall time, with backbone screening (``after``) and, for
    the sizes in ``--before``, without it (``before``).  The floor of a search
    is the sample stage's forward passes (the pilot's for every backbone, the
    sample's for those past it) plus the kept backbones' on all the data, from
    the measured rates (kept in ``ROOT/throughput.json``;
    ``--remeasure`` measures them again).

``quality``
    Real images: ``../shared/data/hymenoptera``, the bundled digits, and
    ``rotations`` (the hymenoptera photos turned by 0, 90, 180 and 270
    degrees: four classes that only real features tell apart), with the two
    backbones whose ImageNet weights are in ``../shared/weights`` and four
    whose weight files hold random values (saved under the names Keras gives
    them, with their hashes listed: they load and pass every check, as a
    careless third-party plugin's would).  The same search with and without
    screening, the same trial count: best validation accuracy, what was
    dropped, and Kendall's tau between the sample ranking (accuracy, LogME)
    and the full-data ranking (the same heads fitted on the full cache).

    python benchmarks/screening.py throughput
    python benchmarks/screening.py cost --sizes 10000,30000 --before 10000
    python benchmarks/screening.py quality --sets hymenoptera,digits,rotations

Everything is written under ``--root`` (default /tmp/autotl-screening).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _datasets import SHARED, search_data

HERE = Path(__file__).resolve().parent
DEFAULT_SIX = [
    "mobilenet_v2-0.35",
    "mobilenet_v2-1.0",
    "mobilenet-0.25",
    "mobilenet_v3_small-1.0",
    "efficientnet_b0",
    "resnet50",
]
REAL = ["mobilenet_v2-0.35", "mobilenet-0.25"]
RANDOM = ["mobilenet-0.5", "mobilenet_v2-0.5", "mobilenet_v3_small-1.0", "mobilenet-0.75"]

THROUGHPUT = """
import json, sys, time
import numpy as np
from autotl.backbones.registry import get_registry
from autotl.backbones.weights import WeightsSource, resolve_weights
from autotl.training.cache import extractor
from autotl.training.model import build_base
name, n = sys.argv[1], int(sys.argv[2])
spec = get_registry([]).backbone(name)
base = build_base(spec, resolve_weights(spec, WeightsSource("none")))
forward = extractor(spec, base, [None], spec.input_size, dtype="float16")
batch = np.random.default_rng(0).uniform(0, 255, (32, *spec.input_size, 3)).astype("float32")
forward(batch)
start, done = time.perf_counter(), 0
while done < n:
    np.asarray(forward(batch)[0][0]); done += 32
print(json.dumps({"backbone": name, "images_per_second": done / (time.perf_counter() - start)}))
"""

SEARCH = """
import json, sys, time
t0 = time.perf_counter()
import autotl
from autotl.run.stages import read_all
kw = json.loads(sys.argv[1])
marks = {}
def on_event(e):
    if "trial" in e and "first_trial" not in marks:
        marks["first_trial"] = time.perf_counter() - t0
run = autotl.search(on_event=on_event, report=False, **kw)
wall = time.perf_counter() - t0
study = run.study
best = {}
for t in study.trials:
    if t.state.name == "COMPLETE":
        b = t.params["backbone"]
        best[b] = max(best.get(b, 0.0), t.value)
stages = read_all(run.storage_url, run.study_name)
print("RESULT " + json.dumps({"wall": wall, "first_trial": marks.get("first_trial"),
    "best": run.best_value, "per_backbone": best, "stages": stages,
    "trials": len([t for t in study.trials if t.state.name == "COMPLETE"])}))
"""


def _env(weights_dir: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if weights_dir is not None:
        env["AUTOTL_WEIGHTS_DIR"] = str(weights_dir)
    return env


def _python(code: str, *args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True
    )
    if proc.returncode:
        sys.exit(f"failed: {' '.join(args)[:300]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def search(env: dict[str, str], **kw: object) -> dict:
    """One search in a fresh process; its timings, best value, per-backbone bests and stage records."""
    out = _python(SEARCH, json.dumps(kw), env=env)
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def throughput(names: list[str], images: int) -> dict[str, float]:
    rates = {}
    for name in names:
        out = _python(THROUGHPUT, name, str(images), env=_env())
        rates[name] = json.loads(out.strip().splitlines()[-1])["images_per_second"]
        print(f"{name:24s} {rates[name]:8.1f} img/s", flush=True)
    return rates


def _space(root: Path, name: str, backbones: list[str], trials: int, screening: dict) -> Path:
    """A phase-1-only space (two_stage over the whole budget, no boundaries cached)."""
    import yaml

    raw = {
        "backbones": backbones,
        "head": {"width": [64, 128, 256], "dropout": {"low": 0.0, "high": 0.5}},
        "phase1": {"learning_rate": 1e-3, "epochs": 20, "patience": 3},
        "phase2": {"unfreeze_blocks": {"low": 0, "high": 0}, "epochs": 1},
        "two_stage": {"trials": trials, "finalists": 1},
        "backbone_screening": screening,
        "trials": trials,
        "seed": 0,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cost(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    from scale import generate, subset

    root = Path(args.root)
    sizes = [int(s) for s in args.sizes.split(",")]
    full = generate(root / "synthetic", max(sizes), os.cpu_count() or 2)
    saved = root / "throughput.json"
    if args.remeasure or not saved.is_file():
        saved.write_text(json.dumps(throughput(DEFAULT_SIX, args.images)))
    rates = json.loads(saved.read_text())
    env = _env(_random_weights(root, [b for b in DEFAULT_SIX if b not in REAL]))
    for n in sizes:
        data = subset(root / "synthetic", full, n) if n != max(sizes) else full
        runs = {"after": {"enabled": True}}
        if n in [int(s) for s in args.before.split(",") if s]:
            runs["before"] = {"enabled": False}
        for label, screening in runs.items():
            space = _space(root, f"cost-{label}", DEFAULT_SIX, args.trials, screening)
            out = root / f"cost-{n}-{label}"
            r = search(
                env, data=str(data), out=str(out), space=str(space), cache_dir=str(out / "cache")
            )
            decision = r["stages"].get("backbone_screening/decision")
            kept = decision["kept"] if decision else DEFAULT_SIX
            sample = decision["sample_images"] if decision else 0
            pilot = {  # backbone -> images of its pilot (none without a pilot rung)
                k.rsplit("/", 1)[1]: v["train_images"] + v["val_images"]
                for k, v in r["stages"].items()
                if k.startswith("backbone_screening/pilot/") and "accuracy" in v
            }
            on = r["stages"].get("backbone_screening/pilot_decision", {}).get("kept", DEFAULT_SIX)
            floor = (
                sum(n / rates[b] for b in kept)
                + sum(sample / rates[b] for b in on)
                + sum(p / rates[b] for b, p in pilot.items())
            )
            print(
                json.dumps(
                    {
                        "images": n,
                        "run": label,
                        "first_trial_s": round(r["first_trial"] or -1, 1),
                        "wall_s": round(r["wall"], 1),
                        "kept": kept,
                        "past_pilot": on if pilot else None,
                        "floor_s_one_core": round(floor, 1),
                        "best": r["best"],
                    }
                ),
                flush=True,
            )


def _random_weights(root: Path, names: list[str]) -> Path:
    """A weights folder: the two real files of ../shared/weights and random-valued files for ``names``."""
    folder = root / ("weights-" + "-".join(sorted(names)))
    if (folder / "SHA256SUMS").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for f in (SHARED / "weights").glob("*.h5"):
        if not (folder / f.name).exists():
            os.symlink(f, folder / f.name)
    code = (
        "import sys, keras\nfrom autotl.backbones.registry import get_registry\n"
        "reg = get_registry([])\n"
        "for i, name in enumerate(sys.argv[2:]):\n"
        "    spec = reg.backbone(name); keras.utils.set_random_seed(i + 1)\n"
        "    spec.build((*spec.input_size, 3), None).save(sys.argv[1] + '/' + spec.weights_file)\n"
    )
    _python(code, str(folder), *names, env=_env())
    sums = subprocess.run(
        "sha256sum *.h5", shell=True, cwd=folder, capture_output=True, text=True, check=True
    )
    (folder / "SHA256SUMS").write_text(sums.stdout)
    return folder


def scores(stages: dict, key: str) -> dict[str, float]:
    """Backbone -> one field of its stored sample result (its pilot's, when the pilot dropped it)."""
    found = {}
    for prefix in ("backbone_screening/pilot/", "backbone_screening/sample/"):  # the sample's win
        found.update(
            {k[len(prefix) :]: v.get(key) for k, v in stages.items() if k.startswith(prefix)}
        )
    return found


def _tau(a: dict[str, float], b: dict[str, float]) -> float:
    from scipy.stats import kendalltau

    names = sorted(set(a) & set(b))
    # scores equal to 1e-6 are ties: constant features give the same LogME up to float round-off
    return float(
        kendalltau([round(a[n], 6) for n in names], [round(b[n], 6) for n in names]).statistic
    )


def quality(args: argparse.Namespace) -> None:
    root = Path(args.root)
    env = _env(_random_weights(root, RANDOM))
    backbones = REAL + RANDOM
    for name in args.sets.split(","):
        where = search_data(name, root)
        sample = args.hymenoptera_sample if name == "hymenoptera" else args.sample
        cache = str(root / f"cache-{name}")
        results = {}
        for label, screening in (
            ("without", {"enabled": False}),
            ("with", {"enabled": True, "sample": sample}),
            ("full-scores", {"enabled": True, "sample": 10**6}),
        ):
            trials = 1 if label == "full-scores" else args.trials
            space = _space(root, f"{name}-{label}", backbones, trials, screening)
            results[label] = search(
                env, out=str(root / f"q-{name}-{label}"), space=str(space), cache_dir=cache, **where
            )
        stages, full = results["with"]["stages"], results["full-scores"]["stages"]
        decision = stages["backbone_screening/decision"]
        print(
            json.dumps(
                {
                    "set": name,
                    "sample_images": decision["sample_images"],
                    "best_without": results["without"]["best"],
                    "best_with": results["with"]["best"],
                    "kept": decision["kept"],
                    "random_dropped": [b for b in RANDOM if b not in decision["kept"]],
                    "sample_accuracy": scores(stages, "accuracy"),
                    "sample_logme": scores(stages, "logme"),
                    "full_accuracy": scores(full, "accuracy"),
                    "tau_accuracy": _tau(scores(stages, "accuracy"), scores(full, "accuracy")),
                    "tau_logme": _tau(scores(stages, "logme"), scores(full, "accuracy")),
                    "tau_full_logme": _tau(scores(full, "logme"), scores(full, "accuracy")),
                    "wall_without": round(results["without"]["wall"], 1),
                    "wall_with": round(results["with"]["wall"], 1),
                    "val_images": scores(full, "val_images"),
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["throughput", "cost", "quality"])
    parser.add_argument("--root", default="/tmp/autotl-screening")
    parser.add_argument("--sizes", default="10000,30000")
    parser.add_argument("--before", default="10000", help="sizes also run without screening")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--images", type=int, default=320, help="images per throughput measurement")
    parser.add_argument("--remeasure", action="store_true", help="measure the throughput again")
    parser.add_argument("--sets", default="hymenoptera,digits,rotations")
    parser.add_argument("--sample", type=int, default=600)
    parser.add_argument("--hymenoptera-sample", type=int, default=200)
    args = parser.parse_args()
    Path(args.root).mkdir(parents=True, exist_ok=True)
    if args.part == "throughput":
        rates = throughput(DEFAULT_SIX, args.images)
        (Path(args.root) / "throughput.json").write_text(json.dumps(rates))
    else:
        {"cost": cost, "quality": quality}[args.part](args)


if __name__ == "__main__":
    main()
