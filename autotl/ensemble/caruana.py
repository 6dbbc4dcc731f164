"""Ensemble selection from a library of models (Caruana, Niculescu-Mizil, Crew and Ksikes, ICML 2004).

Greedy forward selection *with replacement* over the models' predicted
probabilities on a hillclimb set: start from the best ``init`` models (the
paper's sorted initialisation: the ``n`` best, ``n <= init`` chosen by the
score on the hillclimb set, so it never starts below the best model alone),
then repeatedly add the model (possibly one
already in) whose addition most improves the ensemble's score, and stop when
no addition improves it.  Picking a model twice doubles its weight, so the
result is a weighted average whose weights are counts / total.  With
``bags`` > 0, the selection is repeated on random halves of the library and
the bags' ensembles averaged (the paper's bagged ensemble selection, which
curbs overfitting the hillclimb set when the library is large).

"Improves" means a higher score, or an equal score with a lower log loss:
on a few hundred images accuracy moves in steps of 1/n and ties everywhere,
and autotl breaks ties of its objective by validation loss everywhere else
too.  Pure numpy; the caller says what the score is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotl.scoring.metrics import accuracy, log_loss

__all__ = ["Selected", "select", "combine"]

Score = Callable[[np.ndarray, np.ndarray], float]
#: A log-loss decrease smaller than this is not an improvement (float noise, endless re-additions).
MIN_LOSS_GAIN = 1e-6


def combine(probs: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The weighted average of the models' probabilities (``probs`` is ``[models, images, classes]``)."""
    w = np.asarray(weights, np.float64)
    return np.tensordot(w / w.sum(), np.asarray(probs, np.float64), axes=1)


@dataclass(frozen=True)
class Selected:
    """What the selection chose: the weight of each model of the library, and how it got there."""

    weights: tuple[float, ...]  # per model, summing to 1 (counts / total without bagging)
    counts: tuple[int, ...]  # per model, times picked (over all bags)
    steps: list[dict[str, Any]] = field(
        default_factory=list
    )  # each addition: model, score, loss (first bag)

    @property
    def members(self) -> list[int]:
        """Indices of the models with a weight, in library order."""
        return [i for i, w in enumerate(self.weights) if w > 0]


def _key(probs: np.ndarray, labels: np.ndarray, score: Score) -> tuple[float, float]:
    return -score(probs, labels), log_loss(probs, labels)


def _better(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[0] or (a[0] == b[0] and a[1] < b[1] - MIN_LOSS_GAIN)


def _forward(
    probs: np.ndarray,
    labels: np.ndarray,
    score: Score,
    library: Sequence[int],
    init: int,
    max_steps: int,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One greedy forward selection over the models ``library``; counts per model of ``probs``."""
    counts = np.zeros(len(probs), np.int64)
    alone = sorted(library, key=lambda j: (*_key(probs[j], labels, score), j))
    first = min(  # sorted initialisation: the n best, n <= init chosen on the hillclimb set
        range(1, max(1, init) + 1),
        key=lambda n: (*_key(probs[alone[:n]].mean(0), labels, score), n),
    )
    for j in alone[:first]:
        counts[j] += 1
    total = np.tensordot(counts, probs, axes=1)
    best = _key(total / counts.sum(), labels, score)
    steps = [{"add": [int(j) for j in alone[:first]], "score": -best[0], "loss": best[1]}]
    for _ in range(max_steps):
        n = counts.sum() + 1
        tried = [(_key((total + probs[j]) / n, labels, score), j) for j in library]
        key, j = min(tried, key=lambda kj: (*kj[0], kj[1]))
        if not _better(key, best):
            break
        counts[j] += 1
        total = total + probs[j]
        best = key
        steps.append({"add": [int(j)], "score": -key[0], "loss": key[1]})
    return counts, steps


def select(
    probs: np.ndarray,
    labels: np.ndarray,
    score: Score = accuracy,
    *,
    init: int = 1,
    max_steps: int = 50,
    bags: int = 0,
    bag_fraction: float = 0.5,
    seed: int = 0,
) -> Selected:
    """Choose weights for the models whose probabilities are ``probs`` (``[models, images, classes]``).

    ``score(probs, labels)`` is maximised (accuracy by default); the ``n``
    best models start the ensemble, ``n <= init`` chosen by that score; at most
    ``max_steps`` additions follow.  With
    ``bags`` > 0, each bag runs the selection on a random ``bag_fraction`` of
    the models (at least two) and the bags' weights are averaged.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    m = len(probs)
    if m < 1 or probs.ndim != 3 or probs.shape[1] != len(labels) or not len(labels):
        raise ValueError(
            f"probs must be [models, images, classes] for {len(labels)} labels, got {probs.shape}"
        )
    if bags <= 0:
        counts, steps = _forward(probs, labels, score, range(m), init, max_steps)
        return Selected(
            tuple(float(c) for c in counts / counts.sum()), tuple(int(c) for c in counts), steps
        )
    rng = np.random.default_rng(seed)
    size = min(m, max(2, round(bag_fraction * m)))
    weights, total = np.zeros(m), np.zeros(m, np.int64)
    first: list[dict[str, Any]] = []
    for _ in range(bags):
        library = sorted(rng.choice(m, size=size, replace=False).tolist())
        counts, steps = _forward(probs, labels, score, library, init, max_steps)
        weights += counts / counts.sum()
        total += counts
        first = first or steps
    return Selected(tuple(float(w) for w in weights / bags), tuple(int(c) for c in total), first)
