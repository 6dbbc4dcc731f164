"""autotl against plain keras-tuner: the same search, side by side, in one invocation.

Both engines search the same space on the same data with the same trials,
epoch limits, early stopping and seed.  keras-tuner is written the way the
Keras transfer-learning guide teaches it: a HyperModel whose ``fit`` trains the
head, then unfreezes the top blocks and fine-tunes, every epoch through the
whole model.  autotl trains on its frozen-feature cache.

Each engine runs in its own process, so peak RSS is that engine's alone.

    python benchmarks/search_speed.py [--data DIR] [--weights-dir DIR] [--trials 10]

Prints, for each engine and each setting (phase 2 skipped / in every trial):
wall time, best validation accuracy, peak RSS; then the speed ratio; and the
floor: one forward pass of the backbone over the data, and the share of
autotl's time above it, with what such a search pays once besides the floor
(building and tracing the base, creating the study, saving the model) and its
trials' training.  The floor and autotl run ``--repeat`` times each,
interleaved, and their medians are compared: on a shared machine one run of a
few seconds moves by a quarter.  Then autotl's two-stage search against
fine-tuning in every trial (two backbones): wall time, best accuracy, and when
it was first reached.  ``--only phase1|phase2|two-stage`` runs one setting.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "hymenoptera"
BACKBONE = "mobilenet_v2-0.35"
TWO_STAGE_BACKBONES = "mobilenet_v2-0.35,mobilenet-0.25"
SPACE = {
    "backbones": [BACKBONE],
    "head": {"width": [64, 128, 256], "dropout": {"low": 0.0, "high": 0.5}},
    "phase1": {"learning_rate": 1e-3, "epochs": 20, "patience": 3, "head_loss_threshold": 0.5},
    "phase2": {
        "unfreeze_blocks": {"low": 1, "high": 2},
        "learning_rate": {"low": 1e-5, "high": 1e-4, "log": True},
        "epochs": 5,
        "patience": 2,
    },
    "batch_size": 32,
    "seed": 0,
}


def _space(phase2: bool) -> dict:
    space = json.loads(json.dumps(SPACE))
    if not phase2:
        space["phase2"]["unfreeze_blocks"] = {"low": 0, "high": 0}
    return space


def _load(data: str):
    from autotl.data.dataset import load_folder

    return load_folder(data)


def run_autotl(args: argparse.Namespace, phase2: bool) -> dict:
    import datetime

    import keras  # noqa: F401 -- imported before the clock starts, as keras-tuner's run imports it

    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import WeightsSource
    from autotl.engine.optuna_engine import SearchConfig, run_search
    from autotl.engine.space import SearchSpace

    dataset = _load(args.data)
    raw, trials = _space(phase2), args.trials
    raw["backbones"] = args.backbones.split(",")
    if (
        args.two_stage
    ):  # screen `trials` settings on cached features, then fine-tune the best `finalists`
        raw["screening"] = {"trials": args.trials, "finalists": args.finalists}
        trials += args.finalists
    space = SearchSpace.model_validate(raw)
    with tempfile.TemporaryDirectory() as tmp:
        started = datetime.datetime.now()
        start = time.perf_counter()
        cfg = SearchConfig(
            out=Path(tmp) / "run",
            space=space,
            trials=trials,
            weights=WeightsSource.parse(args.weights_dir),
        )
        study = run_search(cfg, get_registry(autoload=False), dataset)
        wall = time.perf_counter() - start
        heads = sum(sum(t.user_attrs.get("seconds", {}).values()) for t in study.trials)
        phase2_trials = sum(
            1 for t in study.trials if t.user_attrs.get("history", {}).get("phase2")
        )
        best = study.best_value
        first_best = min(
            t.datetime_complete for t in study.trials if t.value is not None and t.value >= best
        )
    return {
        "wall": wall,
        "best": best,
        "phase2_trials": phase2_trials,
        "trials": trials,
        "to_best": (first_best - started).total_seconds(),
        "heads": heads,  # the trials' training, as they recorded it
    }


def _arrays(dataset, size):
    import numpy as np

    def split(s):
        return np.concatenate(list(s.batches(size, 64))), np.asarray(s.labels)

    return split(dataset.train), split(dataset.val)


def run_keras_tuner(args: argparse.Namespace, phase2: bool) -> dict:
    import keras
    import keras_tuner as kt

    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import WeightsSource, resolve_weights
    from autotl.training.model import block_boundaries

    dataset = _load(args.data)
    spec = get_registry(autoload=False).backbone(BACKBONE)
    weights = resolve_weights(spec, WeightsSource.parse(args.weights_dir)).argument
    (x, y), (xv, yv) = _arrays(dataset, spec.input_size)
    space, n_classes = _space(phase2), len(dataset.class_names)

    class TransferHyperModel(kt.HyperModel):
        """Straight from the Keras transfer-learning guide, with the guide's two phases in fit()."""

        def build(self, hp):
            base = keras.applications.MobileNetV2(
                input_shape=(*spec.input_size, 3), alpha=0.35, include_top=False, weights=weights
            )
            base.trainable = False
            inputs = keras.Input((*spec.input_size, 3))
            z = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
            z = base(z, training=False)
            z = keras.layers.GlobalAveragePooling2D()(z)
            z = keras.layers.Dropout(
                hp.Float(
                    "dropout", space["head"]["dropout"]["low"], space["head"]["dropout"]["high"]
                )
            )(z)
            z = keras.layers.Dense(
                hp.Choice("head_width", space["head"]["width"]), activation="relu"
            )(z)
            outputs = keras.layers.Dense(n_classes, activation="softmax")(z)
            model = keras.Model(inputs, outputs)
            model.compile(
                keras.optimizers.Adam(space["phase1"]["learning_rate"]),
                "sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            return model

        def fit(self, hp, model, *fit_args, **kw):
            p1, p2 = space["phase1"], space["phase2"]

            def stop(patience):
                return keras.callbacks.EarlyStopping(
                    "val_loss", patience=patience, restore_best_weights=True
                )

            cbs = kw.pop("callbacks", [])
            h = model.fit(
                *fit_args, epochs=p1["epochs"], callbacks=[*cbs, stop(p1["patience"])], **kw
            )
            blocks = hp.Int(
                "unfreeze_blocks", p2["unfreeze_blocks"]["low"], p2["unfreeze_blocks"]["high"]
            )
            lr = hp.Float(
                "finetune_lr",
                p2["learning_rate"]["low"],
                p2["learning_rate"]["high"],
                sampling="log",
            )
            if blocks:
                base = model.layers[2]
                cut = block_boundaries(base, spec.block_pattern)[-blocks]
                base.trainable = True
                above = False
                for layer in base.layers:
                    layer.trainable = above and not isinstance(
                        layer, keras.layers.BatchNormalization
                    )
                    above = above or layer.name == cut
                model.compile(
                    keras.optimizers.Adam(lr),
                    "sparse_categorical_crossentropy",
                    metrics=["accuracy"],
                )
                h = model.fit(
                    *fit_args, epochs=p2["epochs"], callbacks=[*cbs, stop(p2["patience"])], **kw
                )
            return h

    with tempfile.TemporaryDirectory() as tmp:
        tuner = kt.RandomSearch(
            TransferHyperModel(),
            objective=kt.Objective("val_accuracy", "max"),
            max_trials=args.trials,
            seed=space["seed"],
            directory=tmp,
            project_name="kt",
            overwrite=True,
        )
        start = time.perf_counter()
        tuner.search(x, y, validation_data=(xv, yv), batch_size=space["batch_size"], verbose=0)
        wall = time.perf_counter() - start
        best = tuner.oracle.get_best_trials(1)[0].score
    return {"wall": wall, "best": float(best)}


def run_floor(args: argparse.Namespace, _phase2: bool) -> dict:
    """One forward pass of the frozen base over train and val: what no engine can avoid."""
    from autotl.backbones.preprocess import apply_preprocessing
    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import WeightsSource, resolve_weights

    dataset = _load(args.data)
    spec = get_registry(autoload=False).backbone(BACKBONE)
    weights = resolve_weights(spec, WeightsSource.parse(args.weights_dir)).argument
    (x, _), (xv, _) = _arrays(dataset, spec.input_size)
    x, xv = (apply_preprocessing(spec.preprocessing, a) for a in (x, xv))
    start = time.perf_counter()
    base = spec.build((*spec.input_size, 3), weights)
    built = time.perf_counter()
    base.predict(x[:32], verbose=0)  # warm-up: traced, and one batch
    warm = time.perf_counter()
    base.predict(x, batch_size=32, verbose=0)
    base.predict(xv, batch_size=32, verbose=0)
    wall = time.perf_counter() - warm
    batches = -(-len(x) // 32) - (-len(xv) // 32)
    # what a search with these libraries pays once besides the forward pass: building the base,
    # tracing it, creating an Optuna study in a new SQLite file, saving the model as .keras
    import keras
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        optuna.create_study(storage=f"sqlite:///{tmp}/study.db")
        opened = time.perf_counter()
        head = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(base.output))
        keras.Model(base.input, head).save(f"{tmp}/model.keras")
        saved = time.perf_counter()
    return {
        "wall": wall,
        "build": built - start,
        "trace": warm - built - wall / batches,
        "study": opened - began,
        "save": saved - opened,
    }


ENGINES = {"autotl": run_autotl, "keras-tuner": run_keras_tuner, "floor": run_floor}


def child(args: argparse.Namespace) -> None:
    result = ENGINES[args.engine](args, args.phase2)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def spawn(args: argparse.Namespace, engine: str, phase2: bool, backbones: str = BACKBONE) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--engine",
        engine.removesuffix("-two-stage"),
        "--data",
        args.data,
        "--trials",
        str(args.trials),
        "--backbones",
        backbones,
    ]
    cmd += ["--weights-dir", args.weights_dir] if args.weights_dir else []
    cmd += ["--phase2"] if phase2 else []
    cmd += (
        ["--two-stage", "--finalists", str(args.finalists)] if engine == "autotl-two-stage" else []
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{engine} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


WALL = "wall"


def _median(runs: list[dict]) -> dict:
    """Every numeric figure's median over ``runs``."""
    import statistics

    return {
        k: statistics.median(r[k] for r in runs)
        for k, v in runs[0].items()
        if isinstance(v, (int, float))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--weights-dir", default=os.environ.get("AUTOTL_WEIGHTS_DIR"))
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of the floor and of autotl per setting, interleaved (their medians are compared)",
    )
    parser.add_argument(
        "--only", choices=["phase1", "phase2", "two-stage"], help="run one setting only"
    )
    parser.add_argument(
        "--finalists",
        type=int,
        default=3,
        help="two-stage: fine-tuning trials after screening --trials settings",
    )
    parser.add_argument("--two-stage", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbones", default=BACKBONE, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=list(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--phase2", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(
        f"data {args.data}, backbone {BACKBONE}, {args.trials} trials, CPU cores {os.cpu_count()}, "
        f"floor and autotl {args.repeat} times each (medians; keras-tuner once)"
    )
    floors: list[dict] = []
    settings = [s for s in ("phase1", "phase2") if args.only in (None, s)]
    for setting in settings:
        phase2 = setting == "phase2"
        kt_res = spawn(args, "keras-tuner", phase2)
        runs = []
        for _ in range(args.repeat):  # interleaved, so a slow spell of the machine hits both
            floors.append(spawn(args, "floor", False))
            runs.append(spawn(args, "autotl", phase2))
        floor = _median(floors)
        at_res = {**runs[0], **_median(runs)}
        label = "phase 2 in every trial" if phase2 else "phase 2 skipped"
        print(f"\n== {label}")
        print(
            f"floor: one forward pass over train+val = {floor['wall']:.2f} s "
            f"(runs {', '.join(f'{r[WALL]:.2f}' for r in floors)})"
        )
        for name, r in (("keras-tuner", kt_res), ("autotl", at_res)):
            print(
                f"{name:12s} wall {r['wall']:8.2f} s   best val acc {r['best']:.4f}   peak RSS {r['peak_rss_mb']:7.0f} MB"
            )
        print(f"autotl runs: {', '.join(f'{r[WALL]:.2f}' for r in runs)} s")
        print(f"speed ratio keras-tuner / autotl: {kt_res['wall'] / at_res['wall']:.1f}x")
        print(
            f"best val acc difference (autotl - keras-tuner): {100 * (at_res['best'] - kt_res['best']):+.1f} points"
        )
        print(
            f"autotl / floor: {at_res['wall'] / floor['wall']:.2f}x; time above the floor "
            f"{at_res['wall'] - floor['wall']:.1f} s ({100 * (at_res['wall'] - floor['wall']) / at_res['wall']:.0f}% of its time)"
        )
        once = sum(floor[k] for k in ("build", "trace", "study", "save"))
        bound = floor["wall"] + once + at_res["heads"]
        print(
            f"paid once besides the floor, measured with it: building the base {floor['build']:.2f} s, "
            f"tracing it {floor['trace']:.2f} s, a new Optuna study in SQLite {floor['study']:.2f} s, "
            f"saving the model {floor['save']:.2f} s = {once:.2f} s ({once / floor['wall']:.2f}x the floor); "
            f"with autotl's trials' training ({at_res['heads']:.2f} s, as they recorded it): {bound:.2f} s, "
            f"{bound / floor['wall']:.2f}x the floor; autotl's other {at_res['wall'] - bound:.2f} s: "
            "checks, records, reading the cache"
        )
    if args.only in (None, "two-stage"):
        # both of the shared weight files' backbones, so screening also chooses the backbone
        full = spawn(args, "autotl", True, TWO_STAGE_BACKBONES)
        two = spawn(args, "autotl-two-stage", True, TWO_STAGE_BACKBONES)
        print(
            f"\n== two-stage search (autotl, backbones {TWO_STAGE_BACKBONES}): fine-tune in every trial, "
            f"or screen {args.trials} settings on cached features and fine-tune the best {args.finalists}"
        )
        for name, r in (
            (f"{args.trials} trials, all fine-tuned", full),
            (f"{args.trials} screened + {args.finalists} finalists", two),
        ):
            print(
                f"{name:32s} wall {r['wall']:6.1f} s   best val acc {r['best']:.4f}   best first reached after {r['to_best']:5.1f} s   "
                f"fine-tuned trials {r['phase2_trials']}"
            )


if __name__ == "__main__":
    main()
