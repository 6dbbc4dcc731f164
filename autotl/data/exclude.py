"""Exclusion lists: a search trains without the files a list names, and never touches them.

``autotl doctor`` writes ``issues.csv``; ``autotl search DATA --exclude issues.csv``
(``exclude:`` in the search space, ``autotl.search(exclude=...)``) reads any CSV
with a ``path`` column (relative to DATA_DIR, or absolute inside it), so a
person can keep the rows they agree with, or write a list by hand.  The files
stay where they are: the search's splits simply do without them.

The list changes the data, so it changes the data fingerprint (the run folder,
the feature cache and the lineage follow it), and the data summary records it
as ``exclusions``: the files, the SHA-256 of the sorted list and the CSV it came
from.  A CSV without a ``path`` column, a row with too many or too few fields or
an empty path, or a path outside DATA_DIR or to no file there, is one line (a
:class:`autotl.errors.UsageError`) naming the line.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotl.data.dataset import Dataset, ImageSet
from autotl.data.holdout import subset
from autotl.errors import UsageError

__all__ = ["Exclusion", "read_exclusions", "apply_exclusions", "PATH_COLUMN"]

PATH_COLUMN = "path"
_VERSION = b"autotl-exclude-1\n"


@dataclass(frozen=True)
class Exclusion:
    """The files to leave out (relative to DATA_DIR, sorted, once each), the list's hash, where it came from."""

    files: tuple[str, ...]
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.files).encode()).hexdigest()

    @classmethod
    def of(cls, files: Sequence[str], source: str) -> Exclusion:
        return cls(tuple(sorted(set(files))), source)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Exclusion:
        """The list a data summary recorded (``Dataset.summary()["exclusions"]``)."""
        return cls.of(list(record.get("files") or []), str(record.get("source") or ""))


def read_exclusions(csv_path: str | os.PathLike[str], data_root: str) -> Exclusion:
    """The files ``csv_path`` names under ``data_root``; one line for a row that cannot be used."""
    shown = os.fspath(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise UsageError(
            f"exclusion list {shown} does not exist; pass the issues.csv that `autotl doctor` wrote"
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(
            f"cannot read the exclusion list {shown} ({exc}); pass a CSV file with a {PATH_COLUMN!r} column"
        ) from None
    if not rows or PATH_COLUMN not in [h.strip() for h in rows[0]]:
        raise UsageError(
            f"exclusion list {shown} has no {PATH_COLUMN!r} column in its first line; "
            f"give a CSV whose header names {PATH_COLUMN!r} (as issues.csv does)"
        )
    header = [h.strip() for h in rows[0]]
    column = header.index(PATH_COLUMN)
    root = os.path.abspath(data_root)
    files = []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # a blank line
        if len(row) != len(header):
            raise UsageError(
                f"exclusion list {shown} line {number}: {len(row)} fields where the header has "
                f"{len(header)}; quote fields that hold commas, or delete the row"
            )
        files.append(_inside(row[column].strip(), root, f"exclusion list {shown} line {number}"))
    return Exclusion.of(files, os.path.abspath(shown))


def _inside(path: str, root: str, where: str) -> str:
    """``path`` (relative to ``root`` or absolute) as a relative ``/`` path of a file under ``root``."""
    if not path:
        raise UsageError(
            f"{where}: the {PATH_COLUMN} is empty; name a file under {root}, or delete the row"
        )
    full = os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))
    if os.path.commonpath([full, root]) != root or full == root:
        raise UsageError(f"{where}: {path} is outside the data folder {root}; list only its files")
    if not os.path.isfile(full):
        raise UsageError(
            f"{where}: {path} is not a file of the data folder {root}; fix the path or delete the row"
        )
    return os.path.relpath(full, root).replace(os.sep, "/")


def apply_exclusions(dataset: Dataset, exclusion: Exclusion) -> Dataset:
    """``dataset`` without the listed files in any split (train, val, test), a fingerprint that says so, and
    the list in its summary; a class left without training or validation images is one line."""
    if not exclusion.files:
        return dataset
    gone = set(exclusion.files)
    removed: dict[str, int] = {}
    parts: dict[str, Any] = {}  # replace() checks each split by name
    for name in ("train", "val", "test"):
        images = getattr(dataset, name)
        if images is None:
            continue
        if images.paths is None:
            raise UsageError(
                f"{dataset.source} is a built-in sample: an exclusion list names files of a data folder"
            )
        keep = [i for i, p in enumerate(images.paths) if _rel(p, dataset.source) not in gone]
        removed[name] = len(images) - len(keep)
        parts[name] = subset(images, keep)
    _check_left(dataset, parts, exclusion)
    record = {
        "source": exclusion.source,
        "sha256": exclusion.sha256,
        "count": len(exclusion.files),
        "removed": removed,
        "files": list(exclusion.files),
    }
    return dataclasses.replace(
        dataset,
        **parts,
        fingerprint=_digest(dataset.fingerprint, exclusion),
        test_fingerprint=_digest(dataset.test_fingerprint, exclusion)
        if dataset.test_fingerprint and removed.get("test")
        else dataset.test_fingerprint,
        exclusions=record,
    )


def _rel(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _check_left(dataset: Dataset, parts: Mapping[str, ImageSet], exclusion: Exclusion) -> None:
    """Every class keeps a training and a validation image, or the list is refused in one line."""
    for name in ("train", "val"):
        counts = parts[name].counts(dataset.n_classes)
        empty = [c for c, n in zip(dataset.class_names, counts) if n == 0]
        if empty:
            raise UsageError(
                f"the exclusion list {exclusion.source} leaves class {empty[0]!r} without {name} images; "
                "keep some of its rows out of the list"
            )


def _digest(fingerprint: str, exclusion: Exclusion) -> str:
    return hashlib.sha256(_VERSION + f"{fingerprint}\n{exclusion.sha256}".encode()).hexdigest()
