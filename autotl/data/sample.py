"""A stratified sample of a data set: what backbone screening caches every backbone on.

Train and val are sampled apart, each in proportion to its share of the data
and, within it, in proportion to each class (every class keeps at least
``min(2, its images)`` in each split, so a rare class is still seen).  The
draw is seeded, so every worker and every resume takes the same images, and
the sample has its own fingerprint (the full data's, the size and the seed),
so its cache entries never mix with the full data's.  A sample as large as
the data is the data itself: then screening costs nothing extra, because its
cache is the full cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from autotl.data.dataset import Dataset, ImageSet

__all__ = ["stratified_sample", "is_sample"]


def _pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about ``n`` of ``labels``, in proportion to each class (largest remainders), sorted."""
    classes, counts = np.unique(labels, return_counts=True)
    floor = np.minimum(counts, 2)
    quota = np.maximum(floor, np.floor(counts * n / max(len(labels), 1)).astype(int))
    order = np.argsort(-(counts * n / max(len(labels), 1) - quota), kind="stable")
    for i in order[: max(n - int(quota.sum()), 0)]:
        quota[i] += 1
    quota = np.minimum(quota, counts)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
        for c, q in zip(classes, quota)
    ]
    return np.sort(np.concatenate(chosen))


def _subset(images: ImageSet, index: np.ndarray) -> ImageSet:
    return replace(
        images,
        labels=images.labels[index],
        paths=[images.paths[i] for i in index] if images.paths is not None else None,
        arrays=[images.arrays[i] for i in index] if images.arrays is not None else None,
    )


def stratified_sample(dataset: Dataset, size: int, seed: int) -> Dataset:
    """About ``size`` images of ``dataset`` (train and val in their proportions), stratified by class and
    seeded; ``dataset`` itself when it has no more than ``size`` images."""
    total = len(dataset.train) + len(dataset.val)
    if size >= total:
        return dataset
    rng = np.random.default_rng([seed, size])
    n_val = max(1, round(size * len(dataset.val) / total))
    train = _pick(dataset.train.labels, size - n_val, rng)
    val = _pick(dataset.val.labels, n_val, rng)
    digest = hashlib.sha256(
        f"{dataset.fingerprint}\0sample\0{size}\0{seed}\0".encode()
        + train.tobytes()
        + val.tobytes()
    ).hexdigest()
    return replace(
        dataset,
        train=_subset(dataset.train, train),
        val=_subset(dataset.val, val),
        split=f"{dataset.split}; a stratified sample of {len(train) + len(val)} images (seed {seed})",
        fingerprint=digest,
        test=None,
        test_split=None,
        test_fingerprint=None,
    )


def is_sample(sample: Dataset, dataset: Dataset) -> bool:
    """Whether ``sample`` is a proper sample of ``dataset`` (not the data itself)."""
    return sample.fingerprint != dataset.fingerprint
