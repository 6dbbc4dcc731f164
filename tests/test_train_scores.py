"""What a trial records besides accuracy: scores of its final validation probabilities, and class weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import COLOURS, tiny_trial, write_images

from autotl.training.fitting import Schedule, fit_head
from autotl.training.model import build_head
from autotl.training.trainer import Gate


def trial(registry, dataset, tmp_path: Path, **overrides):
    return tiny_trial(registry, dataset, tmp_path, **overrides)[3]


def check_scores_are_the_restored_epochs(result) -> None:
    """The probabilities scored are the ones early stopping kept: they give the recorded accuracy and loss."""
    s = result.val_scores
    assert s["accuracy"] == pytest.approx(result.val_accuracy, abs=1e-9)
    assert s["log_loss"] == pytest.approx(result.val_loss, rel=1e-4, abs=1e-6)
    metrics = result.attrs()["metrics"]
    assert metrics["val_balanced_accuracy"] == s["balanced_accuracy"]
    assert metrics["val_macro_f1"] == s["macro_f1"]
    assert 0 <= s["balanced_accuracy"] <= 1 and 0 <= s["macro_f1"] <= 1


def test_phase1_trial_scores_its_restored_head(registry, tiny_dataset, tmp_path: Path) -> None:
    result = trial(registry, tiny_dataset, tmp_path, unfreeze_blocks=0)
    assert result.gate is Gate.NOT_ASKED
    check_scores_are_the_restored_epochs(result)


def test_fine_tuned_trial_scores_what_it_kept(registry, tiny_dataset, tmp_path: Path) -> None:
    result = trial(registry, tiny_dataset, tmp_path, finetune_lr=1e-3, phase2_epochs=6)
    assert result.gate is Gate.PASSED and result.phase2_kept
    check_scores_are_the_restored_epochs(result)  # phase 2's probabilities, as kept


def separable(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(n_classes, 12) * 3
    y = np.arange(n) % n_classes
    return (centres[y] + rng.normal(size=(n, 12))).astype("float32"), y


def head(n_classes: int) -> list:
    import keras

    keras.utils.set_random_seed(0)
    layers = build_head(n_classes, 8, 0.0)
    layers[1].build((None, 12))
    layers[2].build((None, 8))
    return layers


def test_class_weights_weight_the_head_trainers_loss() -> None:
    train, val = separable(90, 3, 0), separable(60, 3, 1)
    schedule = Schedule(lr=1e-2, epochs=30, patience=30, batch_size=16)
    plain = fit_head(head(3), train, val, schedule)
    ones = fit_head(head(3), train, val, replace(schedule, class_weight=[1.0, 1.0, 1.0]))
    assert ones == plain  # unit weights are no weights
    # a class weighing nothing is never learnt: the head stops predicting it
    ignored = head(3)
    fit_head(ignored, train, val, replace(schedule, class_weight=[0.0, 1.0, 1.0]))
    w1, b1 = ignored[1].get_weights()
    w2, b2 = ignored[2].get_weights()
    predicted = (np.maximum(val[0] @ w1 + b1, 0) @ w2 + b2).argmax(1)
    assert (predicted[val[1] == 0] == 0).mean() < 0.2
    assert (predicted[val[1] != 0] == val[1][val[1] != 0]).mean() > 0.9


def test_class_weights_weight_keras_fit_for_phase2() -> None:
    import keras

    from autotl.training.fitting import Rows, Schedule, fit

    train, val = separable(90, 3, 0), separable(60, 3, 1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    schedule = Schedule(
        lr=1e-2, epochs=30, patience=30, batch_size=16, class_weight=[0.0, 1.0, 1.0]
    )
    fit(model, Rows(*train), Rows(*val), schedule)
    predicted = np.asarray(model(val[0])).argmax(1)
    assert (predicted[val[1] == 0] == 0).mean() < 0.2
    assert (predicted[val[1] != 0] == val[1][val[1] != 0]).mean() > 0.9


@pytest.mark.slow
def test_balanced_class_weights_in_a_trial_that_fine_tunes(registry, tmp_path: Path) -> None:
    from autotl.data.dataset import load_folder

    folder = tmp_path / "data"
    write_images(folder, {"red": COLOURS["red"]}, 30)
    write_images(folder, {"blue": COLOURS["blue"]}, 6, seed=1)
    dataset = load_folder(folder, val_fraction=0.25, seed=0)
    long = {"phase1_epochs": 400}  # both heads must plateau for both to fine-tune
    weighted = trial(registry, dataset, tmp_path, class_weight="balanced", **long)
    plain = trial(registry, dataset, tmp_path, **long)
    for result in (weighted, plain):
        assert result.gate is Gate.PASSED and result.history["phase2"]
        # the recorded validation loss is the unweighted log loss of the kept probabilities
        check_scores_are_the_restored_epochs(result)
    first = [r.history["phase1"]["loss"][0] for r in (weighted, plain)]
    assert first[0] != pytest.approx(first[1], rel=1e-3)  # the training loss is weighted
