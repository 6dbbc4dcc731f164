"""Every image's nearest neighbours by cosine distance, exact, computed in blocks so memory stays flat.

Near duplicates and outliers both read one k-nearest-neighbour graph of the
pooled features.  A library's brute-force search holds a slice of the distance
matrix as wide as the data set (scikit-learn's ``NearestNeighbors`` takes up
to ``working_memory``, 1 GB, and took 520 s at 100,000 images here); this one
multiplies each pair of blocks of ``BLOCK`` unit vectors once (the similarity is
symmetric), keeps each row's ``k`` best, and looks in later blocks only at
similarities above its current ``k``-th best.  Its memory is a few blocks and the ``(images, k)`` graph,
whatever the number of images; its time is the matrix products, quadratic in
the images (``docs/guide/data-health.md``, "Cost at scale").
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["Neighbours", "nearest", "stored_nearest", "NEIGHBOURS"]

NEIGHBOURS = 10
BLOCK = 2048


@dataclass(frozen=True)
class Neighbours:
    """A k-nearest-neighbour graph: ``distances`` (cosine, nearest first) and ``indices``, ``(images, k)``,
    itself excluded.  It answers ``kneighbors()`` as a fitted scikit-learn ``NearestNeighbors`` does, so
    cleanlab's ``OutOfDistribution`` reads it (its ``knn`` parameter) instead of searching again."""

    distances: np.ndarray
    indices: np.ndarray
    metric: str = "cosine"

    @property
    def n_neighbors(self) -> int:
        return int(self.distances.shape[1])

    def kneighbors(
        self, X: Any = None, n_neighbors: Optional[int] = None, return_distance: bool = True
    ) -> Any:
        """The graph of the images it was built on (``X`` is those images or None)."""
        k = n_neighbors or self.n_neighbors
        if return_distance:
            return self.distances[:, :k], self.indices[:, :k]
        return self.indices[:, :k]


def _unit(block: np.ndarray) -> np.ndarray:
    x = np.asarray(block, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(features: np.ndarray, k: int = NEIGHBOURS, block: int = BLOCK) -> Neighbours:
    """The ``k`` nearest other images of each row of ``features`` (any float dtype; read in blocks).

    Similarity is symmetric, so each pair of blocks is multiplied once and offered to both blocks' rows.
    """
    n = len(features)
    k = max(1, min(k, n - 1))
    # each row's k highest similarities so far, highest first, and their columns
    best = np.full((n, k), -np.inf, np.float32)
    where = np.full((n, k), -1, np.int64)
    for r0 in range(0, n, block):
        x = _unit(features[r0 : r0 + block])
        for c0 in range(r0, n, block):
            sims = x @ (x if c0 == r0 else _unit(features[c0 : c0 + block])).T
            if c0 == r0:
                np.fill_diagonal(sims, -np.inf)  # itself is not a neighbour
            _offer(best, where, sims, r0, c0, 1)
            if c0 != r0:
                _offer(best, where, sims, c0, r0, 0)
    return Neighbours(np.clip(1.0 - best, 0.0, 2.0), where)


def stored_nearest(
    features: np.ndarray, folder: Optional[Path], k: int = NEIGHBOURS, block: int = BLOCK
) -> Neighbours:
    """:func:`nearest`, kept in ``folder`` under a hash of the features and ``k``: the check before a
    search's first trial and its report's data-health section read the same features, and at 100,000
    images the graph costs minutes.  A stored graph is plain arrays (``.npz``, no pickle)."""
    if folder is None:
        return nearest(features, k, block)
    digest = hashlib.sha256(f"neighbours-1 {features.shape} {features.dtype} {k}".encode())
    for r0 in range(0, len(features), block):
        digest.update(np.ascontiguousarray(features[r0 : r0 + block]).tobytes())
    path = Path(folder) / f"{digest.hexdigest()[:32]}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return Neighbours(stored["distances"], stored["indices"])
    except (OSError, ValueError, KeyError):  # not there yet, or a half-written or damaged file
        pass
    graph = nearest(features, k, block)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, distances=graph.distances, indices=graph.indices)
    os.replace(tmp, path)
    return graph


def _offer(
    best: np.ndarray, where: np.ndarray, sims: np.ndarray, r0: int, c0: int, axis: int
) -> None:
    """Block ``sims`` (rows ``r0:`` along ``axis``, columns ``c0:`` along the other): the similarities above
    a row's k-th best join it.  ``axis=0`` offers the block's transpose without copying it."""
    bound = best[r0 : r0 + sims.shape[1 - axis], -1]
    # most rows have nothing new in a late block; where most have, comparing the whole block beats
    # gathering their rows first
    rows_in = np.flatnonzero(sims.max(axis=axis) >= bound)
    if len(rows_in) > len(bound) // 2:
        rows_in = np.arange(len(bound))
        sub = sims
    else:
        sub = sims[rows_in] if axis == 1 else sims[:, rows_in]
    r, c, s = _candidates(sub, bound[rows_in], best.shape[1], axis)
    keep = np.isfinite(s)
    if keep.any():
        rows = slice(r0, r0 + len(bound))
        best[rows], where[rows] = _merge(
            best[rows], where[rows], rows_in[r[keep]], c[keep] + c0, s[keep]
        )


def _candidates(
    sub: np.ndarray, bound: np.ndarray, k: int, axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, column, similarity)`` of ``sub``'s entries at or above their row's ``bound`` (rows along
    ``axis``).  Where rows have many (no k yet, or a block of their own class), each row's k best first."""
    above = sub >= (bound[:, None] if axis == 1 else bound[None, :])
    if sub.shape[axis] > k and np.count_nonzero(above) > 4 * k * len(bound):
        top = np.argpartition(sub, -k, axis=axis)
        top = top[:, -k:] if axis == 1 else top[-k:]
        values = np.take_along_axis(sub, top, axis=axis)
        rows = np.arange(len(bound))
        r = np.repeat(rows, k) if axis == 1 else np.tile(rows, k)
        c, s = top.ravel(), values.ravel()
        keep = s >= bound[r]
        return r[keep], c[keep], s[keep]
    if axis == 1:
        r, c = np.nonzero(above)
        return r, c, sub[r, c]
    c, r = np.nonzero(above)
    return r, c, sub[c, r]


def _merge(
    best: np.ndarray, where: np.ndarray, r: np.ndarray, c: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` best of its current ones and the candidates ``(r, c, s)``; ties by column."""
    height, k = best.shape
    rows = np.concatenate([np.repeat(np.arange(height), k), r])
    sims = np.concatenate([best.ravel(), s])
    cols = np.concatenate([where.ravel(), c])
    order = np.lexsort((cols, -sims, rows))
    starts = np.searchsorted(rows[order], np.arange(height))
    take = order[starts[:, None] + np.arange(k)]
    return sims[take], cols[take]
