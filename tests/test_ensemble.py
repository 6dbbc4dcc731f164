"""Ensembles and test-time augmentation: selection, the combined Keras model, the run's ensemble, export, report.

The selection algorithm is tested on synthetic probabilities (pure numpy).  The
run-level tests share one real tiny search over two backbones of different
input sizes (the tiny plugin at 32 px and a copy at 40 px), on colours close
enough that the models make mistakes, with a held-out test set built here (the
test split feature is not on this branch).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    HYMENOPTERA,
    SHARED_WEIGHTS,
    TINY_PLUGIN,
    TINY_SPACE,
    assert_one_line_error,
    needs_shared,
    run_cli,
    run_without_autotl,
    write_images,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from autotl.ensemble import caruana
from autotl.errors import UsageError
from autotl.scoring.metrics import accuracy, log_loss

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

#: Colours close enough (with the helpers' noise) that tiny models get some images wrong.
CLOSE = {"red": (140, 100, 100), "blue": (100, 100, 140), "green": (100, 140, 100)}
PLUGIN40 = "autotl_tiny40"
PLUGIN40_SOURCE = '''
"""The tiny test backbone at 40 px: a second backbone with another input size."""
from autotl import BackboneSpec, Preprocessing, hookimpl
from autotl_tiny import build_tiny


@hookimpl
def autotl_backbones():
    return [BackboneSpec(name="tiny40", build=build_tiny, input_size=(40, 40),
                         preprocessing=Preprocessing.tf(), block_pattern=r"^block\\d_out$",
                         weights_file="tiny40.weights.h5", description="the tiny CNN at 40 px")]
'''


# --------------------------------------------------------------------------- selection (numpy)


def _onehot(pred: list[int], n_classes: int = 2, p: float | list[float] = 0.8) -> np.ndarray:
    """Probabilities putting ``p`` (per image, or one for all) on the predicted class."""
    p = np.broadcast_to(np.asarray(p, float), (len(pred),))
    out = np.repeat(((1 - p) / (n_classes - 1))[:, None], n_classes, axis=1)
    out[np.arange(len(pred)), pred] = p
    return out


def test_selection_combines_models_whose_mistakes_differ() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
    # a is wrong, hesitantly, on the last two images; b on image 2; c everywhere
    a = _onehot([0, 0, 0, 0, 1, 1, 1, 1, 1, 0], p=[0.9] * 8 + [0.6, 0.6])
    b = _onehot([0, 0, 1, 0, 1, 1, 1, 1, 0, 1], p=0.7)
    c = _onehot([1, 1, 1, 1, 0, 0, 0, 0, 1, 0], p=0.9)
    chosen = caruana.select(np.stack([a, b, c]), y)
    assert accuracy(a, y) == 0.8 and accuracy(b, y) == 0.9
    assert chosen.members == [0, 1] and chosen.counts[2] == 0
    assert sum(chosen.weights) == pytest.approx(1.0)
    assert chosen.weights == pytest.approx([c / sum(chosen.counts) for c in chosen.counts])
    mixed = caruana.combine(np.stack([a, b, c]), chosen.weights)
    assert accuracy(mixed, y) == 1.0  # better than either member
    assert chosen.steps[0]["add"] == [1]  # started from the best model alone


def test_selection_stops_when_no_addition_improves() -> None:
    y = np.array([0, 1, 0, 1])
    perfect = _onehot([0, 1, 0, 1], p=0.99)
    worse = _onehot([0, 1, 1, 1], p=0.7)
    chosen = caruana.select(np.stack([worse, perfect]), y)
    assert chosen.members == [1] and chosen.counts == (0, 1) and len(chosen.steps) == 1


def _key(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return -accuracy(probs, y), log_loss(probs, y)


def test_init_and_bagging() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), size=(6, 40))
    started = caruana.select(probs, y, init=3)
    first = started.steps[0]["add"]
    ranked = sorted(range(6), key=lambda j: (*_key(probs[j], y), j))
    assert 1 <= len(first) <= 3 and first == ranked[: len(first)]  # the n best, best first
    assert set(first) <= set(started.members)
    bagged = caruana.select(probs, y, bags=5, seed=3)
    assert sum(bagged.weights) == pytest.approx(1.0)
    assert bagged == caruana.select(probs, y, bags=5, seed=3)  # seeded
    with pytest.raises(ValueError):
        caruana.select(probs[:, :5], y)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(2, 4),
    st.integers(5, 30),
    st.integers(0, 2**31 - 1),
    st.integers(1, 3),
)
def test_the_ensemble_is_never_worse_than_its_starting_point(
    models: int, classes: int, images: int, seed: int, init: int
) -> None:
    """Greedy forward selection only accepts additions that improve (accuracy, then log loss)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, images)
    probs = rng.dirichlet(np.ones(classes) * 0.5, size=(models, images))
    chosen = caruana.select(probs, y, init=init)
    start = caruana.combine(probs, np.bincount(chosen.steps[0]["add"], minlength=models))
    final = caruana.combine(probs, chosen.weights)
    key = (-accuracy(final, y), log_loss(final, y))
    first = (-accuracy(start, y), log_loss(start, y))
    assert key <= first
    assert all(w >= 0 for w in chosen.weights) and sum(chosen.weights) == pytest.approx(1.0)
    best_alone = min(range(models), key=lambda j: (-accuracy(probs[j], y), log_loss(probs[j], y)))
    assert accuracy(final, y) >= accuracy(probs[best_alone], y)


# --------------------------------------------------------------------------- the combined Keras model


def _tiny_model(size: int, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(size, size, name="resize")(image)
    x = keras.layers.Rescaling(1 / 127.5, -1.0, name="preprocess")(x)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.5, name="head_dropout")(x)  # must stay off inside an ensemble
    x = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(image, x, name="autotl_tiny")  # the same name twice: the ensemble renames


def test_combined_model_averages_members_and_mirrors(tmp_path: Path) -> None:
    import keras

    from autotl.ensemble.model import combined_model

    a, b = _tiny_model(32, 1), _tiny_model(32, 2)
    images = np.random.default_rng(0).uniform(0, 255, (3, 37, 29, 3)).astype("float32")
    pa, pb = a(images).numpy(), b(images).numpy()
    fa, fb = a(images[:, :, ::-1]).numpy(), b(images[:, :, ::-1]).numpy()
    plain = combined_model([("trial_1", a, 3), ("trial_2", b, 1)])
    for _ in range(2):  # called as users call it (no training=): the members' Dropout stays off
        np.testing.assert_allclose(plain(images).numpy(), 0.75 * pa + 0.25 * pb, atol=1e-6)
    flip = combined_model([("trial_1", a, 3), ("trial_2", b, 1)], tta="flip", name="with_flip")
    want = 0.75 * (pa + fa) / 2 + 0.25 * (pb + fb) / 2
    np.testing.assert_allclose(flip(images).numpy(), want, atol=1e-6)
    assert not np.allclose(want, 0.75 * pa + 0.25 * pb, atol=1e-4)  # the mirror changed something
    flip.save(tmp_path / "flip.keras")
    again = keras.saving.load_model(tmp_path / "flip.keras", safe_mode=True)
    np.testing.assert_allclose(again(images).numpy(), want, atol=1e-6)
    assert again.get_layer("resize").height == 32


def test_combined_model_takes_the_largest_members_size_and_refuses_bad_input() -> None:
    from autotl.ensemble.model import check_tta, combined_model

    model = combined_model([("small", _tiny_model(32, 1), 1), ("large", _tiny_model(48, 2), 1)])
    assert (model.get_layer("resize").height, model.get_layer("resize").width) == (48, 48)
    with pytest.raises(UsageError, match="unknown test-time augmentation 'rot90'"):
        check_tta("rot90")
    assert check_tta("none") is None and check_tta(None) is None and check_tta("FLIP") == "flip"


def test_tflite_latency_reports_its_settings(tmp_path: Path) -> None:
    from autotl.export import measure_tflite_latency
    from autotl.export._tflite import convert

    tflite = convert(_tiny_model(32, 1), (32, 32))
    (tmp_path / "m.tflite").write_bytes(tflite)
    for source in (tflite, tmp_path / "m.tflite"):
        r = measure_tflite_latency(source, threads=1, warmup=2, runs=5)
        assert r["threads"] == 1 and r["warmup"] == 2 and r["runs"] == 5
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["input_shape"] == [1, 32, 32, 3] and r["input_dtype"] == "float32"
    with pytest.raises(ValueError):
        measure_tflite_latency(tflite, threads=0)


# --------------------------------------------------------------------------- a real tiny run


@pytest.fixture(scope="module")
def plugin40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plugin40")
    (folder / f"{PLUGIN40}.py").write_text(PLUGIN40_SOURCE)
    sys.path.insert(0, str(folder))
    return folder


@pytest.fixture(scope="module")
def registry2(plugin40):
    from autotl.backbones.registry import get_registry

    return get_registry([TINY_PLUGIN, PLUGIN40], autoload=False)


@pytest.fixture(scope="module")
def close_dataset(tmp_path_factory: pytest.TempPathFactory):
    from autotl.data.dataset import load_folder

    return load_folder(write_images(tmp_path_factory.mktemp("close"), CLOSE, 20), 0.3, 0)


@pytest.fixture(scope="module")
def test_images(tmp_path_factory: pytest.TempPathFactory):
    """Held-out images of the same classes (another seed), as an ImageSet in the run's class order."""
    from autotl.data.dataset import ImageSet

    folder = write_images(tmp_path_factory.mktemp("held_out"), CLOSE, 8, seed=7)
    names = sorted(CLOSE)
    files = [(str(f), c) for c, n in enumerate(names) for f in sorted((folder / n).glob("*.png"))]
    return ImageSet(np.array([c for _, c in files]), paths=[f for f, _ in files])


def _search(out: Path, registry, dataset, trials: int, keep: int, extra: str = "") -> Path:
    """A real tiny search over both backbones; the first two trials are one of each (enqueued)."""
    import yaml

    from autotl.backbones.weights import WeightsSource
    from autotl.engine.optuna_engine import SearchConfig, open_search_study, run_search
    from autotl.engine.space import SearchSpace

    fields = {**yaml.safe_load(TINY_SPACE), "backbones": ["tiny", "tiny40"], "trials": trials}
    space = SearchSpace.model_validate({**fields, **yaml.safe_load(extra or "{}")})
    cfg = SearchConfig(
        out=out, space=space, trials=trials, weights=WeightsSource("none"), keep_models=keep
    )
    cfg.run.prepare()
    study = open_search_study(cfg)
    study.enqueue_trial({"backbone": "tiny"})
    study.enqueue_trial({"backbone": "tiny40"})
    run_search(cfg, registry, dataset)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, registry2, close_dataset) -> Path:
    return _search(tmp_path_factory.mktemp("ens") / "run", registry2, close_dataset, 4, 4)


@pytest.fixture(scope="module")
def selected(run_dir: Path, registry2, test_images):
    """The run's ensemble of its four trials (bagged: several members), with flip TTA, timed."""
    import autotl

    run = autotl.Run(run_dir, registry=registry2, weights="none")
    return run, run.ensemble(4, bags=10, test=test_images, test_source="held out")


def _probs(model_file: Path, images) -> np.ndarray:
    import keras

    model = keras.saving.load_model(model_file, safe_mode=True)
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(model(images.load(i)[None].astype("float32")))
            for i in range(len(images))
        ]
    )


@pytest.mark.slow
def test_run_ensemble_scores_what_its_models_predict(selected, test_images) -> None:
    from autotl.ensemble import load_selection

    run, sel = selected
    backbones = {t.number: t.params["backbone"] for t in run.study.trials}
    assert sorted(sel.candidates) == [0, 1, 2, 3] and sel.candidates[0] == run.best_trial.number
    assert {backbones[n] for n in sel.candidates} == {"tiny", "tiny40"} and sel.input_size == (
        40,
        40,
    )
    assert len(sel.members) >= 2 and set(sel.members) <= set(sel.candidates)
    assert sum(sel.members.values()) == pytest.approx(1.0) and sel.settings["bags"] == 10
    assert [v.name for v in sel.variants] == ["best", "best+flip", "ensemble", "ensemble+flip"]
    best = sel.variant("best")
    # the best single model is the study's best trial, scored as the search scored it
    recorded = run.best_trial.values[0]
    assert abs(best.val.correct - round(recorded * best.val.images)) <= 1
    assert sel.test == {"source": "held out", "images": len(test_images)} and not sel.notes
    for v in sel.variants:  # every score is the variant's own model on the test images
        probs = _probs(run.path / v.model, test_images)
        assert int((probs.argmax(1) == test_images.labels).sum()) == v.test.correct, v.name
        assert v.test.loss == pytest.approx(log_loss(probs, test_images.labels), abs=1e-4)
        assert v.latency["threads"] == 1 and v.latency["median_ms"] > 0
        lo, hi = v.test.ci95
        assert lo <= v.test.accuracy <= hi
    assert load_selection(run.folder).to_dict() == sel.to_dict()


@pytest.mark.slow
def test_a_model_of_both_backbones_predicts_what_its_cached_predictions_say(
    selected, test_images, registry2
) -> None:
    """Members of 32 and 40 px in one model at 40 px: each member sees the image resized twice, and the
    cached predictions (fed at the ensemble's size) must be exactly what the built model computes."""
    from autotl.ensemble import Score, Variant, build_model, mix
    from autotl.ensemble.predictions import input_sizes, largest, predictions, split_key

    run, sel = selected
    trials = [t for t in run.study.trials if t.number in sel.candidates]
    size = largest(input_sizes(trials, registry2))
    members = {t.number: 1.0 + t.number for t in trials}
    models = {n: (lambda n=n: run.folder.trial_model(n)) for n in members}
    key = split_key("test", test_images, run.study.study_name)
    cached = predictions(
        run.folder, models, test_images, key, 3, [None, "flip"], dict.fromkeys(members, size)
    )
    want = mix(cached, members, "flip")
    v = Variant("all+flip", members, "flip", Score.of(want, test_images.labels), input_size=size)
    got = _probs(build_model(run.folder, run.study, v, registry2), test_images)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_predictions_are_cached_and_reused(selected, test_images) -> None:
    run, sel = selected
    cached = sorted((run.folder.ensemble_dir / "predictions").glob("*.npy"))
    assert cached and all(np.load(f, allow_pickle=False).dtype == np.float32 for f in cached)
    before = {f: f.stat().st_mtime_ns for f in cached}
    again = run.ensemble(4, bags=10, test=test_images, latency=False)
    assert {f: f.stat().st_mtime_ns for f in cached} == before  # nothing recomputed
    assert [v.test for v in again.variants] == [v.test for v in sel.variants]


@pytest.mark.slow
def test_the_data_sets_test_split_is_used_and_its_absence_said(
    run_dir, registry2, close_dataset, test_images
) -> None:
    import copy

    import autotl
    from autotl.ensemble import select_ensemble

    run = autotl.Run(run_dir, registry=registry2, weights="none")
    with_test = copy.copy(close_dataset)
    with_test.test = test_images  # the interface of the test-split feature: dataset.test
    sel = select_ensemble(
        run.folder, run.study, k=3, tta=None, dataset=with_test, registry=registry2
    )
    assert sel.test == {"source": "the data set's test split", "images": len(test_images)}
    assert [v.name for v in sel.variants] == ["best", "ensemble"]
    bare = select_ensemble(
        run.folder, run.study, k=3, tta=None, dataset=close_dataset, registry=registry2
    )
    assert bare.test is None and all(v.test is None for v in bare.variants)
    assert any("no test split" in n and "optimistic" in n for n in bare.notes)


@pytest.mark.slow
def test_the_stored_selection_is_reused_until_the_runs_candidates_change(
    selected, test_images, registry2
) -> None:
    from autotl.ensemble import current_selection, save_selection

    run, _ = selected
    stored = run.ensemble(4, bags=10, test=test_images, latency=False)
    assert (
        current_selection(run.folder, run.study, need="ensemble+flip").to_dict() == stored.to_dict()
    )
    stale = stored.to_dict()
    stale["candidates"] = list(reversed(stale["candidates"]))  # as if the top trials had changed
    save_selection(run.folder, type(stored).from_dict(stale))
    again = current_selection(
        run.folder, run.study, tta="flip", test=test_images, bags=10, registry=registry2
    )
    assert again.candidates == stored.candidates and again.members == stored.members


@pytest.fixture(scope="module")
def exported(selected, tmp_path_factory: pytest.TempPathFactory, registry2, test_images):
    from autotl.export import export

    run, sel = selected
    again = run.ensemble(
        4, bags=10, test=test_images, latency=False
    )  # the stored one (tests change it)
    assert again.members == sel.members
    out = tmp_path_factory.mktemp("ens_export") / "out"
    return export(
        run.path,
        out,
        "keras,savedmodel,tflite,onnx",
        ensemble=True,
        tta="flip",
        registry=registry2,
        weights=None,
    )


@pytest.mark.slow
def test_export_ensemble_writes_every_format_with_parity(exported, selected, test_images) -> None:
    _, sel = selected
    out = exported.out_dir
    for name in (
        "model.keras",
        "savedmodel/saved_model.pb",
        "model.tflite",
        "model.onnx",
        "labels.txt",
        "MODEL_CARD.md",
    ):
        assert (out / name).exists(), name
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["exported"]["name"] == "ensemble+flip"
    assert set(parity["formats"]) == {
        "keras",
        "savedmodel:serving_default",
        "savedmodel:serving_bytes",
        "tflite",
        "onnx",  # the members, the outer resize, the weights and the flip, in ONNX Runtime
    }
    assert all(r["passed"] and r["max_abs_diff"] <= 1e-4 for r in parity["formats"].values())
    assert parity["search_score"]["passed"] and all(
        m["passed"] for m in parity["search_score"]["members"]
    )
    assert exported.variant["members"] == sel.members
    # the exported file is the ensemble+flip model that the selection scored
    probs = _probs(out / "model.keras", test_images)
    assert (
        int((probs.argmax(1) == test_images.labels).sum())
        == sel.variant("ensemble+flip").test.correct
    )
    card = (out / "MODEL_CARD.md").read_text()
    assert (
        "ensemble of trials" in card and "flip test-time augmentation" in card and "Caruana" in card
    )
    # the lineage tables know the exported files: one record per member, with its backbone and weights
    record = selected[0].lineage(out / "model.keras")
    assert record["kind"] == "ensemble_export"
    assert sorted(m["trial_number"] for m in record["members"]) == sorted(sel.members)
    assert all(m["backbone"] for m in record["members"])


CHILD = r"""
import numpy as np, keras
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
x = np.load(sys.argv[2]).astype("float32")
print(json.dumps(model(x, training=False).numpy().tolist()))
"""


@pytest.mark.slow
def test_exported_ensemble_loads_with_safe_mode_where_autotl_is_not_importable(
    exported, test_images, tmp_path: Path
) -> None:
    image = test_images.load(0)
    batch = np.stack([image, image[::-1], image[:, ::-1]])  # one size per batch
    np.save(tmp_path / "x.npy", batch)
    got = np.asarray(
        run_without_autotl(
            CHILD, str(exported.out_dir / "model.keras"), str(tmp_path / "x.npy"), cwd=tmp_path
        )
    )
    import keras

    want = keras.saving.load_model(exported.out_dir / "model.keras", safe_mode=True)(
        batch.astype("float32")
    )
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(want), atol=1e-5)


@pytest.mark.slow
def test_export_a_trial_with_flip_tta(selected, tmp_path: Path, registry2, close_dataset) -> None:
    import keras

    from autotl.export import export

    run, _ = selected
    other = next(t.number for t in run.study.trials if t.number != run.best_trial.number)
    result = export(
        run.path, tmp_path / "out", "keras,tflite", trial=other, tta="flip", registry=registry2
    )
    assert result.variant["name"] == f"trial_{other}+flip" and result.trial == other
    assert result.parity["passed"] and result.parity["search_score"]["passed"]
    tta = keras.saving.load_model(result.out_dir / "model.keras", safe_mode=True)
    alone = keras.saving.load_model(run.folder.trial_model(other), safe_mode=True)
    x = close_dataset.val.load(0)[None].astype("float32")
    want = (alone(x).numpy() + alone(x[:, :, ::-1]).numpy()) / 2
    np.testing.assert_allclose(tta(x).numpy(), want, atol=1e-5)


# --------------------------------------------------------------------------- bad input, the space, the report


@pytest.fixture(scope="module")
def one_kept(tmp_path_factory: pytest.TempPathFactory, registry2, close_dataset) -> Path:
    """A run that kept one trial's layers (--keep-models 1)."""
    return _search(tmp_path_factory.mktemp("one") / "run", registry2, close_dataset, 2, 1)


@pytest.mark.slow
def test_bad_ensemble_input_is_one_line_through_the_real_cli(
    one_kept: Path, run_dir: Path, plugin40, tmp_path
) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "plugins"), str(plugin40)])}
    common = ["--plugin", TINY_PLUGIN, "--plugin", PLUGIN40, "--weights", "none"]
    out = tmp_path / "out"
    cases = [
        (
            ["export", str(run_dir), "--ensemble", "--trial", "0", "--out", str(out)],
            "pass one of them",
        ),
        (
            ["export", str(run_dir), "--tta", "rot90", "--out", str(out)],
            "unknown test-time augmentation",
        ),
        (["ensemble", str(run_dir), "--top-k", "1"], "top_k of at least 2"),
        (["ensemble", str(run_dir), "--bags", "-1"], "bags"),
        (["ensemble", str(tmp_path / "nothing")], "does not exist"),
    ]
    for args, fragment in cases:
        proc = run_cli(*args, *common, env={**env, "PYTHONPATH": env["PYTHONPATH"]})
        assert_one_line_error(proc, fragment)
    assert not out.exists()
    # a trial whose layers were not kept is refitted, and the output says so and how long it took
    proc = run_cli("ensemble", str(one_kept), "--tta", "none", "--no-latency", *common, env=env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"trial \d+ refitted in \d+\.\d s", proc.stderr.replace("\n", " "))


@pytest.mark.slow
def test_cli_ensemble_prints_the_comparison(run_dir: Path, plugin40) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "plugins"), str(plugin40)])}
    proc = run_cli(
        "ensemble",
        str(run_dir),
        "--top-k",
        "3",
        "--tta",
        "none",
        "--no-latency",
        "--plugin",
        TINY_PLUGIN,
        "--plugin",
        PLUGIN40,
        "--weights",
        "none",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "best" in proc.stdout and "ensemble" in proc.stdout and "selection.json" in proc.stdout
    assert "no test split" in proc.stderr


@pytest.mark.slow
def test_space_ensemble_runs_at_the_end_of_a_search_and_the_report_shows_it(
    tmp_path: Path, plugin40, close_dataset
) -> None:
    import autotl

    space = tmp_path / "space.yaml"
    space.write_text(
        TINY_SPACE.replace("backbones: [tiny]", "backbones: [tiny, tiny40]")
        + "ensemble: {enabled: true, top_k: 4, tta: none}\n"
    )
    folder = Path(close_dataset.source)
    run = autotl.search(
        folder,
        out=tmp_path / "run",
        space=space,
        trials=4,
        keep_models=1,
        plugins=[TINY_PLUGIN, PLUGIN40],
        weights="none",
    )
    assert run.ensemble_selection is not None and run.folder.ensemble_selection.is_file()
    assert len(run.folder.kept_trials()) == 4  # --keep-models 1 raised to top_k
    assert [v.name for v in run.ensemble_selection.variants] == ["best", "ensemble"]
    html = run.report_paths["html"].read_text()
    md = run.report_paths["md"].read_text()
    record = json.loads(run.report_paths["json"].read_text())
    assert record["ensemble"]["top_k"] == 4 and record["ensemble"]["test"] is None
    for text in (html, md):
        assert (
            "Ensemble and test-time augmentation" in text
            and "Caruana" in text
            and "no test split" in text.lower()
        )


def test_the_space_field_is_off_by_default_and_checked() -> None:
    from autotl.engine.space import SearchSpace, load_space

    space, _ = load_space("fast")
    assert space.ensemble.enabled is False and space.ensemble.top_k == 8
    for bad in ({"top_k": 1}, {"tta": "rot"}, {"size": 3}):
        with pytest.raises(Exception, match="ensemble"):
            SearchSpace.model_validate({**space.model_dump(), "ensemble": bad})


# --------------------------------------------------------------------------- end to end, real weights and data


@pytest.mark.slow
@needs_shared
def test_hymenoptera_search_with_ensemble_then_export_it_with_flip(tmp_path: Path) -> None:
    """The user's path on real data: a search whose space enables ensembles, then the ensemble exported."""
    import yaml

    from autotl.engine.space import load_space

    fast, _ = load_space("fast")
    space = {**fast.model_dump(), "trials": 4, "ensemble": {"enabled": True, "top_k": 4}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    out, deploy = tmp_path / "ants-bees", tmp_path / "deploy"
    env = {"AUTOTL_WEIGHTS_DIR": str(SHARED_WEIGHTS), "AUTOTL_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = run_cli(
        "search",
        str(HYMENOPTERA),
        "--space",
        str(tmp_path / "space.yaml"),
        "--out",
        str(out),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    selection = json.loads((out / "ensemble" / "selection.json").read_text())
    assert selection["top_k"] == 4 and len(selection["candidates"]) == 4
    assert [v["name"] for v in selection["variants"]] == [
        "best",
        "best+flip",
        "ensemble",
        "ensemble+flip",
    ]
    assert all(
        v["latency"]["median_ms"] > 0 and v["val"]["images"] == 153 for v in selection["variants"]
    )
    assert "Ensemble and test-time augmentation" in (out / "report.md").read_text()
    exported = run_cli(
        "export",
        str(out),
        "--ensemble",
        "--tta",
        "flip",
        "--format",
        "keras,tflite",
        "--out",
        str(deploy),
        env=env,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "exported ensemble+flip (trials" in exported.stdout
    parity = json.loads((deploy / "parity.json").read_text())
    assert parity["passed"] and parity["search_score"]["passed"] and parity["images"] == 153
    assert parity["exported"]["members"] == {str(k): v for k, v in selection["members"].items()}
    bee = next((HYMENOPTERA / "val" / "bees").glob("*.jpg"))
    pred = run_cli("predict", str(deploy / "model.tflite"), str(bee))
    assert pred.returncode == 0 and pred.stdout.split("\t")[1] in ("ants", "bees"), pred.stderr
