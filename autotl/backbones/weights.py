"""Where a backbone's weights come from, and proof of which bytes they were.

Offline machines point ``--weights-dir`` (or ``AUTOTL_WEIGHTS_DIR``) at a
folder of Keras weight files named as Keras names them, with an optional
``SHA256SUMS`` list.  The hash is checked before the file is loaded and
recorded with every trial, so a model can always be traced to its weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from autotl.errors import UsageError
from autotl.spec import WEIGHT_FILE_FORMATS, WEIGHTS_IMAGENET, BackboneSpec

__all__ = [
    "WEIGHTS_DIR_ENV",
    "WeightsSource",
    "ResolvedWeights",
    "WeightsMissing",
    "WeightsMismatch",
    "resolve_weights",
    "sha256_file",
    "weight_file_problem",
]

WEIGHTS_DIR_ENV = "AUTOTL_WEIGHTS_DIR"
SUMS_FILE = "SHA256SUMS"
_hash_memo: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) within a process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hash_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _hash_memo[key] = h.hexdigest()
    return _hash_memo[key]


class WeightsMissing(UsageError):
    """No weights to be had: the file is not in the folder, or the backbone has none to download.

    A search skips a backbone of its space for this (with a warning); one named
    with ``--backbone`` must have them.
    """


class WeightsMismatch(UsageError):
    """The file is there but its bytes are not the expected ones: never skipped, always said."""


@dataclass(frozen=True)
class WeightsSource:
    """What the user asked for: ``imagenet`` (Keras downloads), a folder, or ``none`` (random)."""

    kind: str  # "imagenet" | "dir" | "none"
    directory: Optional[Path] = None

    @classmethod
    def parse(cls, weights_dir: str | None = None, weights: str | None = None) -> WeightsSource:
        """``--weights none|imagenet`` wins; then ``--weights-dir``; then the environment; then imagenet."""
        if weights in ("none", "random"):
            return cls("none")
        if weights not in (None, WEIGHTS_IMAGENET):
            raise UsageError(
                f"--weights must be 'imagenet' or 'none', got {weights!r}; use --weights-dir for a folder of weight files"
            )
        directory = weights_dir or (None if weights else os.environ.get(WEIGHTS_DIR_ENV))
        if not directory:
            return cls("imagenet")
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise UsageError(
                f"weights folder {path} does not exist; point --weights-dir or {WEIGHTS_DIR_ENV} at a folder of Keras weight files"
            )
        return cls("dir", path.resolve())

    def describe(self) -> str:
        return str(self.directory) if self.kind == "dir" else self.kind


@dataclass(frozen=True)
class ResolvedWeights:
    """The argument for ``BackboneSpec.build`` and the identity of the bytes behind it."""

    argument: Optional[str]  # None, "imagenet" or a file path
    sha256: Optional[str]
    origin: str  # human-readable: the file, "imagenet (Keras download)" or "random"


def _listed_sums(directory: Path) -> dict[str, str]:
    sums = directory / SUMS_FILE
    if not sums.is_file():
        return {}
    out = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def resolve_weights(spec: BackboneSpec, source: WeightsSource) -> ResolvedWeights:
    """Find and verify the weights of ``spec``; a missing or mismatched file is a UsageError."""
    if source.kind == "none":
        return ResolvedWeights(None, None, "random")
    if source.kind == "imagenet":
        if not spec.downloadable:
            raise WeightsMissing(
                f"backbone {spec.name!r} has no ImageNet weights to download (its plugin says "
                f"downloadable=False); point --weights-dir or {WEIGHTS_DIR_ENV} at a folder holding "
                f"{spec.weights_file or 'its weights file'}, or pass --weights none"
            )
        return ResolvedWeights(WEIGHTS_IMAGENET, spec.weights_sha256, "imagenet (Keras download)")
    assert source.directory is not None
    if not spec.weights_file:
        raise WeightsMissing(
            f"backbone {spec.name!r} declares no weights file name, so it cannot load from {source.directory}; use --weights imagenet or --weights none"
        )
    path = source.directory / spec.weights_file
    if not path.is_file():
        raise WeightsMissing(
            f"backbone {spec.name!r} needs weights file {spec.weights_file} but it is not in {source.directory}; add the file there or leave {spec.name!r} out of the search space"
        )
    actual = sha256_file(path)
    listed = _listed_sums(source.directory).get(spec.weights_file)
    expected, where = (
        (listed, f"{source.directory / SUMS_FILE}")
        if listed
        else (spec.weights_sha256, f"plugin {spec.plugin or spec.name!r}")
    )
    if expected and actual != expected:
        raise WeightsMismatch(
            f"weights file {path} has SHA-256 {actual} but {where} expects {expected}; replace the file or fix the hash list"
        )
    return ResolvedWeights(str(path), actual, str(path))


#: The first bytes of each weight-file format: HDF5's signature, and a zip archive's (``.keras``).
_MAGIC = {".keras": b"PK\x03\x04", ".h5": b"\x89HDF\r\n\x1a\n", ".hdf5": b"\x89HDF\r\n\x1a\n"}


def weight_file_problem(path: str | os.PathLike[str]) -> Optional[str]:
    """What is wrong with a weight file's format (its name's ending or its first bytes), or None.

    ``keras.Model.load_weights`` picks its reader by the ending (see
    :data:`autotl.spec.WEIGHT_FILE_FORMATS`), so a file whose bytes are not
    that format fails deep inside Keras; said here, it names the file.
    """
    name = Path(path).name
    ending = next((e for e in WEIGHT_FILE_FORMATS if name.endswith(e)), None)
    if ending is None:
        return f"{name}: Keras reads weight files ending in {', '.join(WEIGHT_FILE_FORMATS)} only"
    magic = _MAGIC[".keras" if ending == ".keras" else ".h5"]
    with open(path, "rb") as f:
        head = f.read(len(magic))
    if head != magic:
        kind = "a zip archive (.keras)" if ending == ".keras" else "an HDF5 file"
        return f"{path} is not {kind}: its first bytes are {head!r}; save it again with Keras"
    return None
