"""Duplicates: the same bytes (the manifest's SHA-256), and near copies found by feature similarity.

A near copy (re-encoded, resized, lightly cropped) is found by cosine distance
between pooled features, among each image's nearest neighbours
(:func:`autotl.health._neighbours.nearest`, exact, in blocks): a pair is a
near duplicate when its distance is under ``near`` times the data set's median
nearest-neighbour distance (the rule of cleanlab's Datalab, which uses 0.13;
0.35 here, measured in docs/guide/data-health.md to catch most resized and cropped copies
while no two different photos of the shared ants-and-bees set pass it).  Every
pair whose two files are in different splits is *leakage*.

Each pair is one finding whose ``path`` is the copy to leave out and whose
``other`` is the copy to keep: the one in the more valuable split (test, then
val, then train), so leaving the listed files out keeps the evaluation splits
as they are; within a split, the first by name is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from autotl.health._findings import Finding

if TYPE_CHECKING:
    from autotl.health._neighbours import Neighbours
    from autotl.health._subject import Subject

#: A pair is near when its cosine distance is under this times the median nearest-neighbour distance.
NEAR = 0.35
_KEEP_FIRST = {"test": 0, "val": 1, "train": 2}


def _pair(subject: Subject, i: int, j: int, kind: str, score: float, detail: str) -> Finding:
    """The finding of pair ``(i, j)``: the copy in the less valuable split (else the later name) is ``path``."""
    keep, drop = sorted((i, j), key=lambda r: (_KEEP_FIRST[subject.splits[r]], subject.rels[r]))
    if subject.splits[keep] != subject.splits[drop]:
        kind = "leakage"
    names = subject.class_names
    return Finding(
        subject.rels[drop],
        kind,
        round(float(score), 4),
        other=subject.rels[keep],
        label=names[subject.labels[drop]],
        split=subject.splits[drop],
        other_split=subject.splits[keep],
        detail=detail,
    )


def exact_duplicates(subject: Subject) -> list[Finding]:
    """Files with the same bytes: each copy paired with the one kept (its group's most valuable)."""
    groups: dict[str, list[int]] = {}
    for i, fact in enumerate(subject.facts):
        if fact.sha256:
            groups.setdefault(fact.sha256, []).append(i)
    out = []
    for rows in groups.values():
        if len(rows) > 1:
            keep = min(rows, key=lambda r: (_KEEP_FIRST[subject.splits[r]], subject.rels[r]))
            out += [
                _pair(subject, keep, r, "exact_duplicate", 1.0, "exact") for r in rows if r != keep
            ]
    return out


def near_pairs(knn: Neighbours, near: float = NEAR) -> Iterator[tuple[int, int, float]]:
    """``(i, j, cosine distance)``, ``i < j``, once each, of neighbours closer than ``near`` x the median
    nearest-neighbour distance (exact copies, at distance 0, left out of the median)."""
    distances, indices = knn.kneighbors()
    first = distances[:, 0]
    positive = first[first > 1e-6]
    if not len(positive):
        return
    bound = near * float(np.median(positive))
    rows, ranks = np.nonzero(distances < bound)
    seen: set[tuple[int, int]] = set()
    for i, rank in zip(rows.tolist(), ranks.tolist()):
        j = int(indices[i, rank])
        pair = (min(i, j), max(i, j))
        if pair not in seen:
            seen.add(pair)
            yield (*pair, float(distances[i, rank]))


def near_duplicates(subject: Subject, knn: Neighbours, near: float = NEAR) -> list[Finding]:
    """Pairs close in feature space that are not the same bytes."""
    out = []
    for i, j, d in near_pairs(knn, near):
        if subject.facts[i].sha256 and subject.facts[i].sha256 == subject.facts[j].sha256:
            continue  # found by hash already
        out.append(
            _pair(subject, i, j, "near_duplicate", 1.0 - d, f"cosine similarity {1.0 - d:.3f}")
        )
    return out
