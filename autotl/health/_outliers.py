"""Outliers: images far from every other (cleanlab's out-of-distribution score on the features), and what
the manifest knows: files that do not decode, pictures far smaller than the rest, rare formats and modes."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from autotl.health._findings import Finding

if TYPE_CHECKING:
    from autotl.health._neighbours import Neighbours
    from autotl.health._subject import Subject

#: An image is an outlier when its mean distance to its neighbours is beyond Q3 + FENCE x IQR of the data
#: set's (cleanlab Datalab's default rule for features: 1 / 0.37037 - 1).
FENCE = 1.7
#: A picture is tiny when its shorter side is under this share of the data set's median shorter side.
TINY = 0.25
#: A format and mode is odd when fewer than this share of the images have it.
ODD = 0.05


def outliers(subject: Subject, features: np.ndarray, graph: Neighbours) -> list[Finding]:
    """cleanlab's ``OutOfDistribution`` scores (lower: less typical); those past the fence are findings.
    ``graph`` is the features' nearest neighbours (the near-duplicate search's), so none are searched again."""
    from cleanlab.outlier import OutOfDistribution

    if len(features) < 12:  # too few to say what is typical
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ood = OutOfDistribution(params={"knn": graph})
        scores = ood.score(features=features)
    far = -np.log(np.clip(scores, 1e-12, 1.0))  # the mean neighbour distance, rescaled
    q1, q3 = np.quantile(far, [0.25, 0.75])
    bound = q3 + FENCE * (q3 - q1)
    names = subject.class_names
    return [
        Finding(
            subject.rels[i],
            "outlier",
            round(1.0 - float(scores[i]), 4),
            label=names[subject.labels[i]],
            split=subject.splits[i],
            detail=f"OOD score {scores[i]:.3f}",
        )
        for i in np.flatnonzero(far > bound)
    ]


def unreadable(subject: Subject) -> list[Finding]:
    """Files the scan could not use, with its reason (they never reach training)."""
    return [Finding(rel, "unreadable", 1.0, detail=reason) for rel, reason in subject.skipped]


def tiny(subject: Subject) -> list[Finding]:
    """Pictures whose shorter side is under :data:`TINY` of the median shorter side."""
    sides = np.array([min(f.width, f.height) for f in subject.facts], dtype=float)
    known = sides[sides > 0]
    if not len(known):
        return []
    median = float(np.median(known))
    return [
        _fact(
            subject,
            i,
            "tiny",
            1.0 - sides[i] / median,
            f"{f.width}x{f.height} (median side {median:.0f})",
        )
        for i, f in enumerate(subject.facts)
        if 0 < sides[i] < TINY * median
    ]


def odd_modes(subject: Subject) -> list[Finding]:
    """Pictures whose ``"FORMAT MODE"`` fewer than :data:`ODD` of the images share (a GIF among JPEGs)."""
    modes = Counter(f.mode for f in subject.facts if f.mode)
    if len(modes) < 2:
        return []
    total, common = sum(modes.values()), modes.most_common(1)[0][0]
    return [
        _fact(
            subject,
            i,
            "odd_mode",
            1.0 - modes[f.mode] / total,
            f"{f.mode}: {modes[f.mode]} of {total} (most are {common})",
        )
        for i, f in enumerate(subject.facts)
        if f.mode and modes[f.mode] < ODD * total
    ]


def _fact(subject: Subject, i: int, kind: str, score: Any, detail: str) -> Finding:
    return Finding(
        subject.rels[i],
        kind,
        round(float(score), 4),
        label=subject.class_names[subject.labels[i]],
        split=subject.splits[i],
        detail=detail,
    )
