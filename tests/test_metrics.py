"""Scores from probabilities (balanced accuracy, macro F1, log loss) and balanced class weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotl.scoring import metrics
from autotl.scoring.metrics import balanced_class_weights, classification_scores


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(2, 5),
    seed=st.integers(0, 2**16),
)
def test_scores_agree_with_scikit_learn(n: int, k: int, seed: int) -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), n)
    y = rng.integers(0, k, n)
    got = classification_scores(p, y)
    pred = p.argmax(1)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert got["log_loss"] == pytest.approx(log_loss(y, p, labels=list(range(k))), rel=1e-6)
    # the one accuracy and log loss every caller uses (ensemble selection, export's checks)
    assert (metrics.accuracy(p, y), metrics.log_loss(p, y)) == (got["accuracy"], got["log_loss"])


def test_balanced_accuracy_is_not_fooled_by_the_big_class() -> None:
    y = np.array([0] * 9 + [1])
    always_zero = np.tile([0.9, 0.1], (10, 1))
    s = classification_scores(always_zero, y)
    assert s["accuracy"] == 0.9 and s["balanced_accuracy"] == 0.5 and s["macro_f1"] < 0.5


def test_no_images_gives_nan_not_an_error() -> None:
    assert all(math.isnan(v) for v in classification_scores(np.zeros((0, 3)), []).values())
    with pytest.raises(ValueError, match="probabilities"):
        classification_scores(np.zeros((2, 3)), [0])


def test_balanced_weights_give_every_class_the_same_total() -> None:
    labels = np.array([0] * 30 + [1] * 6 + [2] * 4)
    w = balanced_class_weights(labels, 4)  # class 3 has no image
    totals = np.bincount(labels, minlength=4) * w
    assert totals[:3] == pytest.approx([totals[0]] * 3) and w[3] == 0.0
    assert (np.bincount(labels, minlength=4) * w).sum() == pytest.approx(len(labels))
