"""Image data: scan a folder (or take in-memory samples), split it, fingerprint it.

Every file is decoded once at scan time, so a truncated JPEG is reported before
trial 1 instead of killing trial 17; the decoded pixels are then dropped and
files are decoded again, lazily, batch by batch, by worker processes
(:mod:`autotl.data.decoding`).  With a manifest (:mod:`autotl.data.manifest`, one per run
folder) a later scan reads only the files added or changed since.  The layout
is the one ``keras.utils.image_dataset_from_directory`` reads:
``DATA_DIR/CLASS/IMAGE``, or ``DATA_DIR/train/CLASS/IMAGE`` + ``DATA_DIR/val/CLASS/IMAGE``.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotl.data import manifest as manifest_mod
from autotl.data.decoding import BadImage, decode_files, decode_image, ordered, workers_for
from autotl.errors import UsageError

__all__ = [
    "BadImage",
    "ImageSet",
    "Dataset",
    "decode_image",
    "resize_images",
    "load_folder",
    "from_arrays",
]

LAYOUT = "DATA_DIR/CLASS/IMAGE"
_JUNK = {"thumbs.db", "desktop.ini"}  # OS litter, ignored like hidden files
_FINGERPRINT_VERSION = b"autotl-data-1\n"


def resize_images(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """float32 ``(n, h, w, 3)``, values 0..255: a batch of same-size images ``(n, H, W, 3)`` resized as
    ``keras.layers.Resizing(h, w)`` does (TensorFlow's bilinear resize, no antialiasing, half-pixel centres).

    Called on uint8 pixels it gives the same floats as on float pixels, without
    converting the full-size images first.
    """
    import tensorflow as tf

    h, w = (int(s) for s in size)
    return tf.image.resize(images, (h, w), method="bilinear").numpy().astype(np.float32, copy=False)


@dataclass
class ImageSet:
    """One split. Either `paths` (files, decoded lazily, never all held in memory) or `arrays` (in-memory uint8 HxWx3) is set."""

    labels: np.ndarray
    paths: list[str] | None = None
    arrays: list[np.ndarray] | None = None
    max_side: int = 1024  # the decode_image bound used at scan time, reused by load()
    # decoding processes for batches (None: the cores; 0: threads in this process)
    decode_workers: Optional[int] = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if (self.paths is None) == (self.arrays is None):
            raise ValueError("ImageSet needs exactly one of paths or arrays")
        n = len(self.paths if self.paths is not None else self.arrays)  # type: ignore[arg-type]
        if n != len(self.labels):
            raise ValueError(f"{n} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 HxWx3."""
        if self.arrays is not None:
            return self.arrays[i]
        path = self.paths[i]  # type: ignore[index]
        try:
            return decode_image(path, self.max_side)
        except BadImage as exc:
            raise _changed(path, str(exc)) from None

    def batches(
        self,
        size: tuple[int, int],
        batch_size: int = 32,
        order: Optional[Sequence[int]] = None,
    ) -> Iterator[np.ndarray]:
        """float32 (b, h, w, 3) batches in ``order`` (default: as stored), values 0..255, each image resized as
        ``keras.layers.Resizing(h, w)`` does.

        That layer's default is TensorFlow's bilinear resize without
        antialiasing; it is called here on the uint8 pixels, which gives the
        same floats as on float pixels without converting the full-size image
        first, so a model that resizes inside itself sees exactly these values
        (:func:`resize_images`).  Files are decoded by the decoding processes, a
        few batches ahead: memory holds a few batches, whatever the split's size.
        """
        h, w = (int(s) for s in size)
        if h < 1 or w < 1 or batch_size < 1:
            raise ValueError(f"size and batch_size must be positive, got {size}, {batch_size}")
        index = np.arange(len(self)) if order is None else np.asarray(order, dtype=np.int64)
        spans = (index[k : k + batch_size] for k in range(0, len(index), batch_size))
        for images in self._decoded(spans):
            same = len({im.shape for im in images}) == 1  # one op for the batch (samples)
            groups = [np.stack(images)] if same else [im[None] for im in images]
            yield np.concatenate([resize_images(g, (h, w)) for g in groups])

    def _decoded(self, spans: Iterator[np.ndarray]) -> Iterator[list[np.ndarray]]:
        """The pixels of each span of indices, in order."""
        if self.arrays is not None:
            for span in spans:
                yield [self.arrays[i] for i in span]
            return
        paths = self.paths or []
        workers = workers_for(len(paths), self.decode_workers)
        lists = (list(span) for span in spans)
        pending: deque[list[int]] = deque()

        def tasks() -> Iterator[tuple[list[str], int]]:
            for span in lists:
                pending.append(span)
                yield [paths[i] for i in span], self.max_side

        for images in ordered(decode_files, tasks(), workers):
            indices = pending.popleft()
            for i, image in zip(indices, images):
                if isinstance(image, str):
                    raise _changed(paths[i], image)
            yield images

    def counts(self, n_classes: int) -> list[int]:
        """Images per class, in class order."""
        return np.bincount(self.labels, minlength=n_classes).tolist()


def _changed(path: str, reason: str) -> UsageError:
    return UsageError(
        f"image {path} can no longer be decoded ({reason}); it changed after the data "
        "folder was scanned: restore it or run again"
    )


@dataclass
class Dataset:
    """Both splits plus what a run report needs: where the data came from and what was dropped."""

    class_names: list[str]
    train: ImageSet
    val: ImageSet
    source: str
    split: str
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # images the search never sees, scored once for the chosen model (autotl.data.holdout)
    test: ImageSet | None = None
    test_split: str | None = None  # where they came from: "folder test/", "test_fraction=0.2 ..."
    test_fingerprint: str | None = None
    scan: dict[str, Any] = field(default_factory=dict)  # files listed, read, seconds, manifest
    # files left out on purpose (autotl.data.exclude): the list, its hash and where it came from
    exclusions: Optional[dict[str, Any]] = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> dict[str, Any]:
        """JSON-able record of the data a search used."""
        parts = (("train", self.train), ("val", self.val), ("test", self.test))
        counts = {
            name: dict(zip(self.class_names, part.counts(self.n_classes)))
            for name, part in parts
            if part is not None
        }
        return {
            "source": self.source,
            "split": self.split,
            "class_names": list(self.class_names),
            "counts": counts,
            "skipped": len(self.skipped),
            "fingerprint": self.fingerprint,
            **(
                {"test_split": self.test_split, "test_fingerprint": self.test_fingerprint}
                if self.test is not None
                else {}
            ),
            **({"exclusions": self.exclusions} if self.exclusions else {}),
        }


@dataclass(slots=True)
class _Item:
    rel: str  # relative to DATA_DIR, "/"-separated (or "#index" for arrays)
    label: int
    digest: str  # sha256 of the file bytes / pixel bytes
    index: int  # position in the scan's file list (or in the arrays)
    path: str | None = None
    array: np.ndarray | None = None


def load_folder(
    path: str | os.PathLike[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    min_per_class: int = 1,
    max_side: int = 1024,
    *,
    manifest: str | os.PathLike[str] | None = None,
    decode_workers: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dataset:
    """Scan DATA_DIR (see module doc), drop unusable files, split, fingerprint.

    ``manifest`` (a run folder's ``manifest.jsonl``) remembers every file's hash
    and verdict: only files added or changed since (by size and modification
    time) are read again, and it is rewritten with the split.  Files are read by
    ``decode_workers`` processes (default: the cores; 0: threads in this
    process); ``progress(done, total)`` follows the files being read.
    """
    _check_fraction(val_fraction)
    layout = _folder_layout(path, val_fraction, seed)
    files, skipped = _list_files(layout)
    started = time.perf_counter()
    workers = workers_for(len(files), decode_workers)
    where = Path(manifest) if manifest is not None else None
    scan = manifest_mod.check(files, where, layout.root, max_side, workers, progress)
    found, tried = _usable(layout, files, scan, skipped)
    _check_found(layout, found, tried, min_per_class)
    if layout.split == "folders":
        train = [i for (p, _), items in found.items() if p == "train" for i in items]
        val = [i for (p, _), items in found.items() if p == "val" for i in items]
    else:
        everything = [i for items in found.values() for i in items]
        train, val = _stratify(everything, layout.class_names, val_fraction, seed, layout.notes)
    del found
    if where is not None:
        _save_manifest(where, layout.root, max_side, files, scan, (train, val))
    n_files, reread = len(files), scan.reread
    del files, scan  # the scan's bookkeeping goes before the data set is built
    dataset = _finish(layout, train, val, skipped=sorted(skipped), max_side=max_side)
    dataset.scan = {
        "files": n_files,
        "read": reread,
        "seconds": round(time.perf_counter() - started, 3),
        "manifest": str(where) if where is not None else None,
    }
    for part in (dataset.train, dataset.val):
        part.decode_workers = decode_workers
    return dataset


@dataclass
class _Layout:
    """A data folder's shape: where it is, its parts (``{"train": .., "val": ..}`` or ``{"": DATA_DIR}``),
    how it is split, its classes (all, and each part's folders), and what was noticed on the way."""

    root: str  # the folder (the source's name, for in-memory images)
    parts: dict[str, str]
    split: str
    class_names: list[str]
    classes: dict[str, list[str]]
    notes: list[str]


def _folder_layout(path: str | os.PathLike[str], val_fraction: float, seed: int) -> _Layout:
    """DATA_DIR's layout (see the module doc), or one line saying what is wrong with it."""
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise UsageError(f"data folder {root} {what}; pass a folder of class subfolders ({LAYOUT})")
    parts, split, notes = _layout(root, val_fraction, seed)
    class_names, classes = _classes(root, parts, notes)
    return _Layout(root, parts, split, class_names, classes, notes)


Files = list[tuple[str, str, str, str]]  # (relative path, path, class, part)
Found = dict[tuple[str, int], list["_Item"]]  # (part, label) -> the usable images


def _list_files(layout: _Layout) -> tuple[Files, list[tuple[str, str]]]:
    """Every file in the class folders, and those passed over while walking them (with why)."""
    files: Files = []
    skipped: list[tuple[str, str]] = []
    for part, folder in layout.parts.items():
        for c in layout.classes[part]:
            listed, passed = _walk(layout.root, os.path.join(folder, c))
            files += [(rel, full, c, part) for rel, full in listed]
            skipped += passed
    return files, skipped


def _usable(
    layout: _Layout, files: Files, scan: Any, skipped: list[tuple[str, str]]
) -> tuple[Found, dict[tuple[str, int], int]]:
    """The images the scan found usable, by part and class, and how many files each had; the
    others join ``skipped`` with their reason."""
    label_of = {c: k for k, c in enumerate(layout.class_names)}
    found: Found = {(p, k): [] for p in layout.parts for k in range(len(layout.class_names))}
    tried = dict.fromkeys(found, 0)
    for i, ((rel, full, c, part), result) in enumerate(zip(files, scan.checked)):
        tried[(part, label_of[c])] += 1
        if result.reason is None:
            found[(part, label_of[c])].append(_Item(rel, label_of[c], result.sha256, i, path=full))
        else:
            skipped.append((rel, result.reason))
    return found, tried


def _save_manifest(
    where: Path,
    root: str,
    max_side: int,
    files: list[tuple[str, str, str, str]],
    scan: Any,
    split: tuple[list[_Item], list[_Item]],
) -> None:
    """The manifest, rewritten with the split each file went to (unless it already says so)."""
    splits: list[Optional[str]] = [None] * len(files)
    for name, items in zip(("train", "val"), split):
        for item in items:
            splits[item.index] = name
    manifest_mod.write(where, root, max_side, files, scan, splits)


def _classes(
    root: str, parts: dict[str, str], notes: list[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """The class names (sorted union over the parts) and each part's class folders; one line if there are none."""
    classes: dict[str, list[str]] = {}
    for part, folder in parts.items():
        classes[part], loose = _listdir(folder)
        where = f"{folder}" if part else f"data folder {root}"
        if loose:
            notes.append(
                f"ignored {len(loose)} file(s) directly in {folder}: images belong in class subfolders"
            )
        if not classes[part]:
            what = f"holds {len(loose)} file(s) but no class subfolders" if loose else "is empty"
            raise UsageError(
                f"{where} {what}; put the images in one subfolder per class ({LAYOUT})"
            )
    class_names = sorted(set().union(*classes.values()))
    if len(class_names) < 2:
        raise UsageError(
            f"{root} has one class folder ({class_names[0]}); classification needs at least two "
            f"classes: add another class subfolder of images ({LAYOUT})"
        )
    return class_names, classes


def _check_found(
    layout: _Layout,
    found: Found,
    tried: dict[tuple[str, int], int],
    min_per_class: int,
) -> None:
    """Every class has usable images in every part, and at least ``min_per_class``; else one line."""
    root, parts, class_names, classes = (
        layout.root,
        layout.parts,
        layout.class_names,
        layout.classes,
    )
    problems = []
    for (part, label), items in found.items():
        shown = (_rel(root, parts[part]) + "/" if part else "") + class_names[label] + "/"
        if class_names[label] not in classes[part]:
            problems.append(f"class {class_names[label]!r} has no folder {shown}")
        elif not items:
            problems.append(
                f"class folder {shown} has no usable images ({tried[(part, label)]} file(s) skipped)"
            )
    if problems:
        need = (
            "every class needs images in train/ and in val/"
            if layout.split == "folders"
            else "every class needs images"
        )
        raise UsageError("; ".join(problems) + f"; {need}: add some, or remove the class folder")
    totals = [sum(len(found[(p, k)]) for p in parts) for k in range(len(class_names))]
    low = [f"{c} ({n})" for c, n in zip(class_names, totals) if n < min_per_class]
    if low:
        raise UsageError(
            f"class(es) with fewer than {min_per_class} usable images: {', '.join(low)}; "
            "add images or lower the minimum per class"
        )


def _layout(root: str, val_fraction: float, seed: int) -> tuple[dict[str, str], str, list[str]]:
    """{"train": folder, "val": folder} when DATA_DIR has them, else {"": DATA_DIR}; the split; notes."""
    dirs, _ = _listdir(root)
    val_dirs = [d for d in ("val", "validation") if d in dirs]
    if "train" not in dirs or not val_dirs:
        if "train" in dirs and set(dirs) <= {"train", "test", "valid", "eval"}:
            raise UsageError(
                f"{root} has train/ but no val/ or validation/; add DATA_DIR/val/CLASS/IMAGE, "
                f"or pass {os.path.join(root, 'train')} to split it automatically"
            )
        return {"": root}, f"stratified, val_fraction={val_fraction:g}, seed={seed}", []
    if len(val_dirs) == 2:
        raise UsageError(
            f"{root} has both val/ and validation/; keep one of them (DATA_DIR/val/CLASS/IMAGE)"
        )
    notes = [
        f"ignored folder {d}/ (only train/, {val_dirs[0]}/ and test/ are used)"
        for d in dirs
        if d not in ("train", val_dirs[0], "test")  # test/: autotl.data.holdout
    ]
    return (
        {"train": os.path.join(root, "train"), "val": os.path.join(root, val_dirs[0])},
        "folders",
        notes,
    )


def _listdir(folder: str) -> tuple[list[str], list[str]]:
    """Visible sub-folders and files, sorted."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise UsageError(
            f"cannot list {folder} ({exc.strerror or exc}); check its permissions"
        ) from None
    names = [n for n in names if not n.startswith(".") and n.lower() not in _JUNK]
    dirs = [n for n in names if os.path.isdir(os.path.join(folder, n))]
    return dirs, [n for n in names if n not in dirs]


def _rel(root: str, full: str) -> str:
    return os.path.relpath(full, root).replace(os.sep, "/")


def _walk(root: str, folder: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Visible files as (relative path, path), recursively and sorted, and (relative path, reason)
    of folders not entered: symlinked ones (so a link loop cannot hang the scan) and unreadable ones."""
    files: list[tuple[str, str]] = []
    passed: list[tuple[str, str]] = []

    def unreadable(exc: OSError) -> None:
        passed.append((_rel(root, str(exc.filename)), f"cannot list folder: {exc.strerror or exc}"))

    cut = len(root.rstrip(os.sep)) + 1  # every path below is root + sep + relative path
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        passed += [
            (
                _rel(root, os.path.join(dirpath, d)),
                "symlinked folder not followed; link its files instead",
            )
            for d in dirnames
            if os.path.islink(os.path.join(dirpath, d))
        ]
        base = dirpath + os.sep
        shown = base[cut:].replace(os.sep, "/")
        files += [
            (shown + name, base + name)
            for name in sorted(filenames)
            if not name.startswith(".") and name.lower() not in _JUNK
        ]
    return files, passed


def from_arrays(
    images: Sequence[Any],
    labels: Any,
    class_names: Sequence[str],
    source: str,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """In-memory images (built-in samples) -> the same split and fingerprint as a folder."""
    _check_fraction(val_fraction)
    names = [str(c) for c in class_names]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError(f"{source}: needs at least two distinct class names, got {names}")
    y = np.asarray(labels).reshape(-1)
    if len(y) != len(images) or not len(y) or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(
            f"{source}: needs one integer label per image, got {len(y)} labels for {len(images)} images"
        )
    if y.min() < 0 or y.max() >= len(names):
        raise UsageError(
            f"{source}: labels must be in 0..{len(names) - 1}, got {y.min()}..{y.max()}"
        )
    items = []
    for i, (image, label) in enumerate(zip(images, y.tolist())):
        a = _as_rgb_uint8(np.asarray(image), f"{source}: image {i}")
        digest = hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()
        items.append(_Item(f"#{i}", int(label), digest, i, array=a))
    notes: list[str] = []
    train, val = _stratify(items, names, val_fraction, seed, notes)
    split = f"stratified, val_fraction={val_fraction:g}, seed={seed}"
    layout = _Layout(source, {}, split, names, {}, notes)
    return _finish(layout, train, val, skipped=[], max_side=1024)


def _as_rgb_uint8(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] != 3 or 0 in a.shape:
        raise UsageError(f"{what} has shape {a.shape}; images must be HxWx3 RGB (or HxW grayscale)")
    if a.dtype != np.uint8:
        if not (
            np.issubdtype(a.dtype, np.number)
            and a.min() >= 0
            and a.max() <= 255
            and np.all(a == np.round(a))
        ):
            raise UsageError(
                f"{what} is {a.dtype} outside whole numbers 0..255; convert it to uint8 pixels"
            )
        a = a.astype(np.uint8)
    return np.ascontiguousarray(a)


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < float(val_fraction) < 1.0:
        raise UsageError(
            f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}; e.g. 0.2"
        )


def _stratify(
    items: list[_Item], class_names: list[str], val_fraction: float, seed: int, notes: list[str]
) -> tuple[list[_Item], list[_Item]]:
    """Per class, the items with the smallest sha256(seed, content, name) go to val: unlike an
    RNG shuffle, the same on every machine and numpy version, whatever the listing order."""
    by_class: dict[int, list[_Item]] = {k: [] for k in range(len(class_names))}
    for item in items:
        by_class[item.label].append(item)
    train: list[_Item] = []
    val: list[_Item] = []
    for label, mine in by_class.items():
        c, n = class_names[label], len(mine)
        if n < 2:  # still learnable, but not measurable: say so rather than refuse the whole folder
            notes.append(
                f"class {c!r} has only {n} usable image: it is used to train, and validation cannot measure it; add images"
            )
            train += mine
            continue
        wanted = math.floor(n * val_fraction + 0.5)
        n_val = min(max(wanted, 1), n - 1)
        if n_val != wanted:
            notes.append(
                f"class {c!r} has only {n} images: {n_val} used to validate, {n - n_val} to train"
            )
        mine.sort(key=lambda i: hashlib.sha256(f"{seed}\0{i.digest}\0{i.rel}".encode()).digest())
        val += mine[:n_val]
        train += mine[n_val:]
    return train, val


def _finish(
    layout: _Layout,
    train: list[_Item],
    val: list[_Item],
    *,
    skipped: list[tuple[str, str]],
    max_side: int,
) -> Dataset:
    """Order, duplicate check, fingerprint, and the two ImageSets."""
    class_names, split, notes = layout.class_names, layout.split, layout.notes
    by_name = operator.attrgetter("label", "rel")
    parts = {"train": sorted(train, key=by_name), "val": sorted(val, key=by_name)}
    first: dict[str, tuple[str, _Item]] = {}
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    h.update(json.dumps({"classes": class_names, "split": split}).encode())
    by_content = operator.attrgetter("label", "digest")
    for part in sorted(parts):  # "train" before "val"; within a part by class, then bytes
        h.update(
            "".join(
                f"\n{part}\0{i.label}\0{i.digest}" for i in sorted(parts[part], key=by_content)
            ).encode()
        )
    for part, items in parts.items():
        for item in items:
            seen = first.setdefault(item.digest, (part, item))
            if seen[1] is item:
                continue
            why = [
                w
                for w, differs in (
                    ("different classes", seen[1].label != item.label),
                    ("train and val", seen[0] != part),
                )
                if differs
            ]
            if why:
                notes.append(
                    f"duplicate image: {seen[1].rel} ({seen[0]}) and {item.rel} ({part}) "
                    f"have the same bytes ({', '.join(why)})"
                )

    def image_set(items: list[_Item]) -> ImageSet:
        labels = np.array([i.label for i in items], dtype=np.int64)
        if items and items[0].array is not None:
            return ImageSet(labels, arrays=[i.array for i in items], max_side=max_side)  # type: ignore[misc]
        return ImageSet(labels, paths=[i.path for i in items], max_side=max_side)  # type: ignore[misc]

    return Dataset(
        class_names=class_names,
        train=image_set(parts["train"]),
        val=image_set(parts["val"]),
        source=layout.root,
        split=split,
        fingerprint=h.hexdigest(),
        skipped=skipped,
        warnings=notes,
    )
