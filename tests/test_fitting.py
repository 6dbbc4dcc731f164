"""The phase-1 head trainer on cached features: Keras' semantics, one trace for every shape."""

from __future__ import annotations

import numpy as np
import pytest

from autotl.errors import TrialFailed
from autotl.training.fitting import MIN_DELTA, Schedule, _head_trainer, fit_head
from autotl.training.model import build_head


def task(n_train: int, n_val: int, dim: int, n_classes: int, seed: int) -> tuple[tuple, tuple]:
    """Train and val features of one task: class means apart, noise around them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 2

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, n)
        return (centres[y] + rng.normal(size=(n, dim))).astype("float32"), y

    return split(n_train), split(n_val)


def head_for(dim: int, width: int, n_classes: int, dropout: float = 0.0, seed: int = 0) -> list:
    import keras

    keras.utils.set_random_seed(seed)
    head = build_head(n_classes, width, dropout)
    head[1].build((None, dim))
    head[2].build((None, width))
    return head


def keras_scores(head: list, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Loss and accuracy of the head as a Keras model, at inference."""
    import keras

    model = keras.Sequential(head)
    p = np.asarray(model(x, training=False), dtype="float64")
    return float(-np.log(p[np.arange(len(y)), y]).mean()), float((p.argmax(1) == y).mean())


def test_restores_the_best_epoch_and_reports_every_epoch() -> None:
    train, val = task(96, 48, 24, 3, 0)
    head = head_for(24, 16, 3, dropout=0.2)
    reports: list[tuple[int, float]] = []
    schedule = Schedule(
        lr=1e-2,
        epochs=60,
        patience=3,
        batch_size=16,
        dropout=0.2,
        offset=5,
        report=lambda s, v: reports.append((s, v)),
    )
    hist = fit_head(head, train, val, schedule)
    assert set(hist) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    n = len(hist["val_loss"])
    assert [s for s, _ in reports] == list(range(5, 5 + n))  # on the caller's step axis
    assert [v for _, v in reports] == hist["val_accuracy"]
    assert n < 60  # early stopping stopped it
    best = 0  # the epoch early stopping keeps: the last that beat the best before it by MIN_DELTA
    for i, loss in enumerate(hist["val_loss"]):
        best = i if loss < hist["val_loss"][best] - MIN_DELTA else best
    assert n - 1 - best >= 3  # patience epochs without improvement
    # the head holds the best epoch's weights: Keras computes the same validation scores from them
    loss, acc = keras_scores(head, *val)
    assert loss == pytest.approx(hist["val_loss"][best], abs=1e-4)
    assert acc == pytest.approx(hist["val_accuracy"][best], abs=1e-6)
    assert acc > 0.9  # and it learned the task


def test_update_is_keras_adam() -> None:
    """One epoch of one full batch without dropout: the same weights as Keras' Adam on the same gradient."""
    import keras

    (x, y), _ = task(32, 0, 12, 2, 2)
    ours, ref = head_for(12, 8, 2, seed=3), head_for(12, 8, 2, seed=3)
    fit_head(ours, (x, y), (x, y), Schedule(lr=1e-2, epochs=1, patience=1, batch_size=32))
    model = keras.Sequential(ref)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.train_on_batch(x, y)
    for a, b in zip(
        ours[1].get_weights() + ours[2].get_weights(), ref[1].get_weights() + ref[2].get_weights()
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_one_trace_serves_every_width_feature_size_and_class_count() -> None:
    trainer = _head_trainer()
    train, val = task(8, 4, 3, 2, 0)
    fit_head(head_for(3, 2, 2), train, val, Schedule(1e-3, 1, 1, batch_size=8))  # the trace
    before = trainer.epoch.experimental_get_tracing_count()
    for dim, width, n_classes in ((20, 8, 2), (36, 32, 5), (20, 8, 2)):
        train, val = task(40, 20, dim, n_classes, dim)
        fit_head(head_for(dim, width, n_classes), train, val, Schedule(1e-3, 3, 2, 8, dropout=0.1))
    assert trainer.epoch.experimental_get_tracing_count() == before


def test_same_seed_same_head_different_seed_different_shuffle() -> None:
    train, val = task(64, 32, 16, 2, 4)
    runs = []
    for seed in (0, 0, 1):
        head = head_for(16, 8, 2, dropout=0.3)
        runs.append(
            (
                fit_head(head, train, val, Schedule(1e-2, 5, 5, 8, dropout=0.3, seed=seed)),
                head[1].get_weights()[0],
            )
        )
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0]["loss"] != runs[2][0]["loss"]


def test_divergence_fails_the_trial_in_one_line() -> None:
    train, val = task(32, 16, 8, 2, 6)
    train = (train[0] * 1e30, train[1])  # float32 overflows in the first matmul
    with pytest.raises(TrialFailed, match=r"diverged at epoch 1.*lower the learning rate"):
        fit_head(head_for(8, 4, 2), train, val, Schedule(1e-3, 5, 2, batch_size=8))
