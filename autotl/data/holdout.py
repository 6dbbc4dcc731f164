"""The test split: images the search never sees, scored once, for the chosen model only.

The validation split chooses the epochs (early stopping) and the best of many
trials, so the chosen trial's validation score is optimistic, the more so the
more trials there were.  A test split gives an honest one:

* ``DATA_DIR/test/CLASS/IMAGE`` beside ``train/`` and ``val/`` is used when it
  exists (its classes must be a subset of ``train/``'s: the model cannot
  predict a class it never learnt);
* otherwise the space's ``test_fraction`` (default 0: off, since a tiny data
  set cannot spare images) holds out that share of each class's *training*
  images, chosen by a seeded hash of each image's name (the same on every
  machine); the validation split is unchanged.

Held-out images change the training split, so they change the data
fingerprint (the feature cache and the run folder follow it); a ``test/``
folder leaves the search's data as it was and has a fingerprint of its own.
The feature cache, the trials and their choice see ``Dataset.train`` and
``Dataset.val`` only; the report, the model card and export score the chosen
model on ``Dataset.test`` once, with its Wilson interval (:func:`holdout_score`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np

from autotl.data.dataset import BadImage, Dataset, ImageSet, decode_image
from autotl.errors import UsageError
from autotl.scoring.metrics import classification_scores
from autotl.scoring.stats import wilson_interval

__all__ = [
    "add_test_split",
    "holdout_score",
    "recommendation",
    "subset",
    "TEST_DIR",
    "RECOMMEND_FROM",
]

TEST_DIR = "test"
#: With at least this many training images in every class and no test split, a test split is recommended.
RECOMMEND_FROM = 100
_VERSION = b"autotl-test-1\n"


def add_test_split(
    dataset: Dataset, data_dir: Optional[str], test_fraction: float = 0.0, seed: int = 0
) -> Dataset:
    """``dataset`` with its test split: ``data_dir``'s ``test/`` folder (when the data has ``train/`` and
    ``val/``), else ``test_fraction`` of each class's training images; unchanged when neither applies."""
    if not 0.0 <= float(test_fraction) < 1.0:
        raise UsageError(f"test_fraction must be in [0, 1), got {test_fraction}; e.g. 0.2")
    folder = os.path.join(data_dir, TEST_DIR) if data_dir else None
    if folder and dataset.split == "folders" and os.path.isdir(folder):
        notes = (
            [f"{folder} is the test split; test_fraction {test_fraction:g} is not used"]
            if test_fraction
            else []
        )
        return _from_folder(dataset, folder, notes)
    if test_fraction > 0:
        return _carve(dataset, float(test_fraction), seed)
    return dataset


def _from_folder(dataset: Dataset, folder: str, notes: list[str]) -> Dataset:
    """The images of ``folder/CLASS/...``; a class that training lacks is a one-line UsageError."""
    classes = sorted(
        d
        for d in os.listdir(folder)
        if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))
    )
    unknown = [c for c in classes if c not in dataset.class_names]
    if unknown:
        raise UsageError(
            f"{folder} has class folder(s) {', '.join(unknown)} that train/ lacks (train/ has "
            f"{', '.join(dataset.class_names)}); the model cannot predict them: remove them from test/ "
            f"or add DATA_DIR/train/{unknown[0]}/ and DATA_DIR/val/{unknown[0]}/"
        )
    files = [(dataset.class_names.index(c), path) for c in classes for path in _files(folder, c)]
    max_side = dataset.train.max_side
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        checked = list(pool.map(lambda f: _check(f[1], max_side), files))
    kept = [(label, path, digest) for (label, path), (digest, _) in zip(files, checked) if digest]
    skipped = [
        (os.path.relpath(path, dataset.source), reason)
        for (_, path), (_, reason) in zip(files, checked)
        if reason
    ]
    if not kept:
        raise UsageError(
            f"{folder} holds no usable image ({len(skipped)} file(s) skipped); put test images in "
            "test/CLASS/ or remove the folder"
        )
    test = ImageSet(
        np.array([k[0] for k in kept], dtype=np.int64),
        paths=[k[1] for k in kept],
        max_side=max_side,
    )
    return dataclasses.replace(
        dataset,
        test=test,
        test_split=f"folder {TEST_DIR}/",
        test_fingerprint=_digest(f"folder {TEST_DIR}/", [(k[0], k[2]) for k in kept]),
        skipped=[*dataset.skipped, *skipped],
        warnings=[*dataset.warnings, *notes],
    )


def _files(folder: str, cls: str) -> list[str]:
    """The visible files under ``folder/cls``, recursively, sorted (symlinked folders not followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(folder, cls), followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, n) for n in sorted(filenames) if not n.startswith(".")]
    return out


def _check(path: str, max_side: int) -> tuple[Optional[str], Optional[str]]:
    """``(sha256 of the bytes, None)`` if the file decodes, else ``(None, reason)``."""
    try:
        decode_image(path, max_side)
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest(), None
    except BadImage as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"


def _identity(images: ImageSet, i: int, source: str) -> str:
    """What names a training image for the seeded choice: its path under the data folder, or its pixels."""
    if images.paths is not None:
        return os.path.relpath(images.paths[i], source).replace(os.sep, "/")
    a = np.ascontiguousarray(images.arrays[i])  # type: ignore[index]
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


def _carve(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """Hold out ``fraction`` of each class's training images (at least one, and never the last one)."""
    train = dataset.train
    ids = [_identity(train, i, dataset.source) for i in range(len(train))]
    held: list[int] = []
    notes: list[str] = []
    for label, name in enumerate(dataset.class_names):
        mine = [i for i in range(len(train)) if train.labels[i] == label]
        if len(mine) < 2:
            notes.append(f"class {name!r} has {len(mine)} training image(s): none held out as test")
            continue
        n = min(max(math.floor(len(mine) * fraction + 0.5), 1), len(mine) - 1)
        mine.sort(key=lambda i: hashlib.sha256(f"{seed}\0test\0{ids[i]}".encode()).digest())
        held += mine[:n]
    held_set = set(held)
    keep = [i for i in range(len(train)) if i not in held_set]
    held.sort()
    split = f"test_fraction={fraction:g} of the training images, seed={seed}"
    test_print = _digest(split, [(int(train.labels[i]), ids[i]) for i in held])
    return dataclasses.replace(
        dataset,
        train=subset(train, keep),
        test=subset(train, held),
        test_split=split,
        test_fingerprint=test_print,
        fingerprint=_digest(dataset.fingerprint, [(0, test_print)]),
        warnings=[*dataset.warnings, *notes],
    )


def subset(images: ImageSet, idx: Sequence[int]) -> ImageSet:
    """The images ``idx`` of ``images``, in that order (decoded the same way)."""
    idx = list(idx)
    labels = images.labels[idx]
    if images.paths is not None:
        return ImageSet(
            labels,
            paths=[images.paths[i] for i in idx],
            max_side=images.max_side,
            decode_workers=images.decode_workers,
        )
    arrays = images.arrays or []
    return ImageSet(
        labels,
        arrays=[arrays[i] for i in idx],
        max_side=images.max_side,
        decode_workers=images.decode_workers,
    )


def _digest(head: str, items: Sequence[tuple[int, str]]) -> str:
    h = hashlib.sha256(_VERSION + head.encode())
    for label, ident in sorted(items):
        h.update(f"\n{label}\0{ident}".encode())
    return h.hexdigest()


def recommendation(dataset: Dataset) -> Optional[str]:
    """A one-line suggestion to hold out a test split, when there is none and every class could spare images."""
    if dataset.test is not None:
        return None
    counts = dataset.train.counts(dataset.n_classes)
    if min(counts) < RECOMMEND_FROM:
        return None
    where = "add DATA_DIR/test/CLASS/IMAGE or " if dataset.split == "folders" else ""
    return (
        f"no test split: the chosen model's validation score is optimistic (the validation images "
        f"also chose it); {where}pass --test-fraction 0.2 (test_fraction: 0.2 in the search space) "
        "for an honest test score"
    )


def holdout_score(probabilities: Any, labels: Any) -> dict[str, Any]:
    """The chosen model's score on the test images: accuracy with its 95% Wilson interval, and the
    other scores the objectives know (balanced accuracy, macro F1, log loss)."""
    y = np.asarray(labels)
    scores = classification_scores(probabilities, y)
    correct = int((np.asarray(probabilities).argmax(axis=1) == y).sum()) if len(y) else 0
    return {
        "images": len(y),
        "correct": correct,
        "ci95": list(wilson_interval(correct, len(y))) if len(y) else None,
        "ci_method": f"Wilson score interval, n = {len(y)} test images",
        **scores,
    }
