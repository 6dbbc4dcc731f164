"""LogME: how well a backbone's frozen features suit a labelled data set, without training a head.

You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning" (ICML 2021).  For each class, a Bayesian linear regression
from the features to that class's 0/1 indicator gets its evidence (the log
marginal likelihood of the labels) maximised over the prior precision
``alpha`` and the noise precision ``beta`` by MacKay's fixed-point updates;
LogME is that evidence per image, averaged over the classes.  Features that
separate the classes score higher than features that do not, and the score
costs one thin SVD of the feature matrix: milliseconds for a few hundred images.

Backbone screening (:mod:`autotl.engine.backbone_screen`) records it beside the
sample head accuracy as a second, training-free signal.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["logme", "evidence"]

_EPS = 1e-5


def evidence(
    s2: np.ndarray, z: np.ndarray, y2: float, n: int, d: int, alpha: float, beta: float
) -> float:
    """Log evidence of one target ``y`` under ``y ~ N(F m, 1/beta)``, ``m ~ N(0, 1/alpha)``, from the SVD of ``F``.

    ``s2`` are the squared singular values of ``F`` (``n x d``), ``z = U^T y``
    and ``y2 = ||y||^2``; the same number as the log density of ``y`` under
    ``N(0, I/beta + F F^T/alpha)`` (the test checks it against that formula).
    """
    shrink = beta * s2 / (alpha + beta * s2)
    m2 = float(np.sum((np.sqrt(s2) * beta * z / (alpha + beta * s2)) ** 2))
    res2 = float(y2 - np.sum(z * z) + np.sum((z * (1 - shrink)) ** 2))
    logdet = float(np.sum(np.log(alpha + beta * s2))) + (d - len(s2)) * math.log(alpha)
    return (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - logdet / 2
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )


def _maximised(s2: np.ndarray, z: np.ndarray, y2: float, n: int, d: int) -> float:
    """The evidence at the fixed point of MacKay's updates of ``alpha`` and ``beta`` (the paper's Algorithm 1)."""
    alpha, beta = 1.0, 1.0
    for _ in range(50):
        shrink = beta * s2 / (alpha + beta * s2)
        gamma = float(np.sum(shrink))
        m2 = float(np.sum((np.sqrt(s2) * beta * z / (alpha + beta * s2)) ** 2))
        res2 = float(y2 - np.sum(z * z) + np.sum((z * (1 - shrink)) ** 2))
        new_alpha = gamma / (m2 + _EPS)
        new_beta = max(n - gamma, _EPS) / (max(res2, 0.0) + _EPS)
        converged = abs(new_alpha / new_beta - alpha / beta) <= 1e-3 * (alpha / beta)
        alpha, beta = max(new_alpha, _EPS), new_beta
        if converged:
            break
    return evidence(s2=s2, z=z, y2=y2, n=n, d=d, alpha=alpha, beta=beta)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (``n x d``) for integer ``labels`` (``n``): the mean over classes of the
    maximised evidence per image.  Higher is better; only differences between backbones on the same
    images mean anything."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if f.ndim != 2 or len(f) != len(y) or len(y) < 2:
        raise ValueError(f"logme needs n x d features and n labels, got {f.shape} and {y.shape}")
    n, d = f.shape
    u, s, _vt = np.linalg.svd(f, full_matrices=False)
    s2 = s * s
    scores = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        scores.append(_maximised(s2, u.T @ target, float(target @ target), n, d) / n)
    return float(np.mean(scores))
