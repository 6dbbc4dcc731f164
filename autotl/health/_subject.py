"""The images a check looks at: every usable image of every split, with what the manifest knows of each."""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from autotl.data import manifest as manifest_mod
from autotl.data.dataset import Dataset
from autotl.data.decoding import Checked, check_file
from autotl.errors import UsageError

SPLITS = ("train", "val", "test")


@dataclass
class Subject:
    """Rows in a fixed order (train, then val, then test, each as its split stores it) and their facts."""

    source: str
    class_names: list[str]
    rels: list[str]  # relative to DATA_DIR, "/"-separated
    paths: list[str]
    splits: list[str]
    labels: np.ndarray
    facts: list[Checked]  # sha256, width, height, "FORMAT MODE" per row
    skipped: list[tuple[str, str]]  # (relative path, reason): files the scan could not use
    fingerprint: str

    def __len__(self) -> int:
        return len(self.rels)

    def counts(self) -> dict[str, int]:
        return {s: self.splits.count(s) for s in SPLITS if s in self.splits}


def subject_of(dataset: Dataset, manifest: Optional[Path]) -> Subject:
    """``dataset``'s images (a data folder's: a built-in sample has no files to name) with their facts: from
    ``manifest`` where it lists them, else read now (a ``test/`` folder is not in the manifest)."""
    parts = [(s, getattr(dataset, s)) for s in SPLITS if getattr(dataset, s, None) is not None]
    if any(images.paths is None for _, images in parts):
        raise UsageError(
            f"{dataset.source} is a built-in sample: data health checks a folder of image files "
            "(`autotl doctor DATA_DIR`)"
        )
    paths = [p for _, images in parts for p in images.paths or []]
    rels = [os.path.relpath(p, dataset.source).replace(os.sep, "/") for p in paths]
    known = manifest_mod.read(manifest)
    facts = _facts(rels, paths, known, dataset.train.max_side)
    return Subject(
        source=dataset.source,
        class_names=list(dataset.class_names),
        rels=rels,
        paths=paths,
        splits=[s for s, images in parts for _ in range(len(images))],
        labels=np.concatenate([np.asarray(images.labels, dtype=np.int64) for _, images in parts]),
        facts=facts,
        skipped=list(dataset.skipped),
        fingerprint=dataset.fingerprint,
    )


def _facts(
    rels: list[str], paths: list[str], known: Mapping[str, manifest_mod.Entry], max_side: int
) -> list[Checked]:
    """Each file's facts: the manifest's entry while it is current, else the file read and decoded now."""
    out: list[Optional[Checked]] = []
    todo = []
    for i, rel in enumerate(rels):
        entry = known.get(rel)
        if entry is not None and entry.mode and entry.sha256:
            out.append(Checked(*entry[:4], entry.width, entry.height, entry.mode))
        else:
            out.append(None)
            todo.append(i)
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for i, checked in zip(todo, pool.map(lambda i: check_file(paths[i], max_side), todo)):
            out[i] = checked
    return out  # type: ignore[return-value]
