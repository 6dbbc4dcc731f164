"""Classification scores from predicted probabilities: what the objectives besides accuracy read.

Plain numpy, no scikit-learn import (a trial computes them once, on its final
validation probabilities; scikit-learn's import alone costs more than that).
The definitions are scikit-learn's, so numbers agree with what users check:
balanced accuracy is the mean recall over the classes present in the labels,
macro F1 the mean F1 over the classes present in the labels or the
predictions (0 where undefined), log loss the mean negative log probability
of the true class (clipped at 1e-7, as Keras' cross-entropy is).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "log_loss",
    "classification_scores",
    "class_counts",
    "balanced_class_weights",
    "EPSILON",
]

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1] before the log, as Keras does


def accuracy(probabilities: Any, labels: Any) -> float:
    """Share of rows whose highest probability is the label."""
    return float((np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)).mean())


def log_loss(probabilities: Any, labels: Any) -> float:
    """Mean negative log probability of the label, clipped at ``EPSILON`` (as Keras clips)."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    true_p = np.asarray(probabilities, dtype=np.float64)[np.arange(len(y)), y]
    return float(-np.log(np.clip(true_p, EPSILON, 1.0)).mean())


def class_counts(labels: Any, n_classes: int) -> np.ndarray:
    """Images per class (class order), for any integer label array."""
    return np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=n_classes)


def balanced_class_weights(labels: Any, n_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights, ``n / (classes * count)`` per class (0 for a class without images),
    so every class adds the same total weight to the training loss."""
    counts = class_counts(labels, n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def classification_scores(probabilities: Any, labels: Any) -> dict[str, float]:
    """``accuracy``, ``balanced_accuracy``, ``macro_f1`` and ``log_loss`` of ``probabilities`` ``[n, classes]``
    against integer ``labels`` ``[n]``; every value is ``nan`` when there is no image."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(
            f"need probabilities [n, classes] for n labels, got {p.shape} and {y.shape}"
        )
    if not len(y):
        return dict.fromkeys(("accuracy", "balanced_accuracy", "macro_f1", "log_loss"), math.nan)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    hits = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(k), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(k), where=predicted > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(k), where=both > 0)
    seen = present | (predicted > 0)
    return {
        "accuracy": float(hits.sum() / len(y)),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[seen].mean()),
        "log_loss": log_loss(p, y),
    }
