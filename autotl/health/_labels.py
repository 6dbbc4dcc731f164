"""Label issues: cleanlab's ``find_label_issues`` on out-of-fold probabilities of heads on the cached features.

Each image's probabilities come from a head trained on the other folds
(:func:`autotl.training.fitting.fit_head`, the search's own head trainer, on
pooled features: well under a second a fold), so no probability is that of a
model that saw the image.  Early stopping uses a slice of the training folds,
never the held-out fold.  A head learns from at most :data:`FIT_ROWS` images
(a random sample of its training folds), so five heads cost the same at
100,000 images as at 25,000, in time and in memory; every image is still
scored by a head that never saw it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from autotl.health._findings import Finding

if TYPE_CHECKING:
    from autotl.health._subject import Subject

FOLDS = 5
#: The most training images one fold's head learns from (a sample beyond): a linear-ish head on pooled
#: features gains little past it, and its time and memory stop growing with the data.
FIT_ROWS = 20_000
HEAD_WIDTH, DROPOUT, LEARNING_RATE, EPOCHS, PATIENCE = 128, 0.2, 1e-3, 100, 5


def out_of_fold(
    features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int = FOLDS, seed: int = 0
) -> np.ndarray:
    """``(images, classes)`` probabilities, each row from a head that never saw that image."""
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(labels, minlength=n_classes).min())
    splits = max(2, min(folds, smallest))
    probs = np.zeros((len(labels), n_classes))
    with (
        warnings.catch_warnings()
    ):  # a class with fewer images than folds: sklearn warns, and copes
        warnings.simplefilter("ignore")
        folding = StratifiedKFold(splits, shuffle=True, random_state=seed).split(features, labels)
        for fold, (train, held) in enumerate(folding):
            probs[held] = _fold(features, labels, n_classes, train, held, seed + fold)
    return probs


def _fold(
    x: np.ndarray, y: np.ndarray, n_classes: int, train: np.ndarray, held: np.ndarray, seed: int
) -> np.ndarray:
    """A head trained on ``train`` (at most :data:`FIT_ROWS` of it; an eighth of those stop the training),
    scored on ``held``."""
    from autotl.training.fitting import Schedule, fit_head, head_probabilities
    from autotl.training.model import build_head
    from autotl.training.seeding import set_random_seed

    order = np.random.default_rng(seed).permutation(train)[: FIT_ROWS + FIT_ROWS // 7]
    stop = order[: max(2, len(order) // 8)]
    fit = order[len(stop) :]
    set_random_seed(seed)
    head = build_head(n_classes, HEAD_WIDTH, DROPOUT)
    for layer in head[1:]:
        layer.build((None, x.shape[1] if layer is head[1] else HEAD_WIDTH))
    batch = int(np.clip(len(fit) // 100, 32, 512))
    schedule = Schedule(
        lr=LEARNING_RATE,
        epochs=EPOCHS,
        patience=PATIENCE,
        batch_size=batch,
        dropout=DROPOUT,
        seed=seed,
    )
    fit_head(head, (x[fit], y[fit]), (x[stop], y[stop]), schedule)
    return head_probabilities(head, _Rows(x, held))


class _Rows:
    """Rows ``index`` of ``x``, read a slice at a time (no copy of the held-out fold)."""

    def __init__(self, x: np.ndarray, index: np.ndarray) -> None:
        self.x, self.index = x, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, part: slice) -> np.ndarray:
        return self.x[self.index[part]]


def label_issues(subject: Subject, probs: np.ndarray) -> list[Finding]:
    """cleanlab's label issues, most likely wrong first, with the given and the suggested class."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = subject.labels
    if len(np.unique(labels)) < 2:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
    names = subject.class_names
    out = []
    for i in ranked:
        others = probs[i].copy()
        others[labels[i]] = -1.0
        out.append(
            Finding(
                subject.rels[i],
                "label_issue",
                round(1.0 - float(quality[i]), 4),
                label=names[labels[i]],
                suggested=names[int(others.argmax())],
                split=subject.splits[i],
                detail=f"p({names[int(others.argmax())]}) = {others.max():.2f}",
            )
        )
    return out
