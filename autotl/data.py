"""Image data: scan a folder (or take in-memory samples), split it, fingerprint it.

Every file is decoded once at scan time, so a truncated JPEG is reported before
trial 1 instead of killing trial 17; the decoded pixels are then dropped and
files are decoded again, lazily, batch by batch.  The layout is the one
``keras.utils.image_dataset_from_directory`` reads: ``DATA_DIR/CLASS/IMAGE``,
or ``DATA_DIR/train/CLASS/IMAGE`` + ``DATA_DIR/val/CLASS/IMAGE``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


class BadImage(Exception):
    """One file cannot be used; ``str()`` is the short reason."""


def resize_images(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """float32 ``(n, h, w, 3)``, values 0..255: a batch of same-size images ``(n, H, W, 3)`` resized as
    ``keras.layers.Resizing(h, w)`` does (TensorFlow's bilinear resize, no antialiasing, half-pixel centres).

    Called on uint8 pixels it gives the same floats as on float pixels, without
    converting the full-size images first.
    """
    import tensorflow as tf

    h, w = (int(s) for s in size)
    return tf.image.resize(images, (h, w), method="bilinear").numpy().astype(np.float32, copy=False)


def decode_image(path: str | os.PathLike, max_side: int = 1024) -> np.ndarray:
    """Decode one file to a uint8 HxWx3 RGB array, or raise BadImage(reason)."""
    with warnings.catch_warnings():  # Pillow's EXIF/bomb warnings: the reason is what counts
        warnings.simplefilter("ignore")
        return _decode_bytes(_read(path), max_side)


def _read(path: str | os.PathLike) -> bytes:
    """The file's bytes; a missing or special file (a FIFO would block) is a BadImage."""
    if not os.path.exists(path):
        raise BadImage("missing (broken link?)")
    if not os.path.isfile(path):
        raise BadImage("not a regular file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None


def _decode_bytes(data: bytes, max_side: int) -> np.ndarray:
    """Decode in memory (the bytes are hashed too, so a file is read once)."""
    from PIL import Image, UnidentifiedImageError

    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    if not data:
        raise BadImage("zero bytes")
    stage = "truncated or corrupt"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "EPS":  # loading it would run Ghostscript on untrusted input
                raise BadImage("EPS is not decoded (it needs Ghostscript); convert it to PNG")
            orientation = _orientation(im)
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale, still >= max_side, so a
            # 12000x12000 photo never exists at full size in memory.
            im.draft("RGB", (max_side, max_side))
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.width * im.height > limit:
                raise BadImage(
                    f"too large: {im.width}x{im.height} pixels (limit {limit}); downscale it"
                )
            im.load()  # the full decode: this is where truncated files fail
            stage = f"cannot convert colour mode {im.mode}"
            return _to_rgb(im, max_side, orientation)
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except Image.DecompressionBombError:
        raise BadImage(f"too large: more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels") from None
    except (BadImage, MemoryError):
        raise
    except Exception as exc:  # Pillow raises many types on bad data
        raise BadImage(
            f"{stage}: {' '.join(str(exc).split())[:100] or type(exc).__name__}"
        ) from None


def _orientation(im: Any) -> int:
    """EXIF orientation (1..8); read before conversion, which drops TIFF tags."""
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # corrupt EXIF: show the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _to_rgb(im: Any, max_side: int, orientation: int) -> np.ndarray:
    """Any Pillow mode -> upright RGB uint8, longest side <= max_side, alpha on white."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I") or mode == "F":
        im = _high_depth_to_l(im)
    elif "transparency" in im.info or mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):  # 1, P, CMYK, YCbCr, ...: resize needs real colours
        im = im.convert("RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # reduce() + Lanczos
    if orientation > 1:  # the table ImageOps.exif_transpose uses, applied after the downscale
        names = (
            "FLIP_LEFT_RIGHT ROTATE_180 FLIP_TOP_BOTTOM TRANSPOSE ROTATE_270 TRANSVERSE ROTATE_90"
        )
        im = im.transpose(getattr(Image.Transpose, names.split()[orientation - 2]))
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        background.alpha_composite(im)
        im = background
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _high_depth_to_l(im: Any) -> Any:
    """16-bit, 32-bit and float grayscale to 8 bits by scaling, not clipping."""
    from PIL import Image

    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        top = 65535.0
    elif im.mode == "F":
        finite = a[np.isfinite(a)]
        hi = float(finite.max()) if finite.size else 0.0
        top = 1.0 if hi <= 1.0 else 255.0 if hi <= 255.0 else 65535.0
    else:  # "I" holds 16-bit PNG/TIFF data, or 8-bit values widened
        top = 65535.0 if a.size and int(a.max()) > 255 else 255.0
    out = np.empty(a.shape, dtype=np.uint8)
    for r in range(0, a.shape[0], 512):  # row blocks bound the float temporaries
        block = np.nan_to_num(a[r : r + 512].astype(np.float32), nan=0.0)
        out[r : r + 512] = np.rint(np.clip(block, 0.0, top) * (255.0 / top)).astype(np.uint8)
    return Image.fromarray(out)


@dataclass
class ImageSet:
    """One split. Either `paths` (files, decoded lazily, never all held in memory) or `arrays` (in-memory uint8 HxWx3) is set."""

    labels: np.ndarray
    paths: list[str] | None = None
    arrays: list[np.ndarray] | None = None
    max_side: int = 1024  # the decode_image bound used at scan time, reused by load()

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
            raise UsageError(
                f"image {path} can no longer be decoded ({exc}); it changed after the data "
                "folder was scanned: restore it or run again"
            ) from None

    def batches(self, size: tuple[int, int], batch_size: int = 32) -> Iterator[np.ndarray]:
        """float32 (b, h, w, 3) batches in order, values 0..255, each image resized as ``keras.layers.Resizing(h, w)`` does.

        That layer's default is TensorFlow's bilinear resize without
        antialiasing; it is called here on the uint8 pixels, which gives the
        same floats as on float pixels without converting the full-size image
        first, so a model that resizes inside itself sees exactly these values
        (:func:`resize_images`).
        """
        h, w = (int(s) for s in size)
        if h < 1 or w < 1 or batch_size < 1:
            raise ValueError(f"size and batch_size must be positive, got {size}, {batch_size}")
        for start in range(0, len(self), batch_size):
            images = [self.load(i) for i in range(start, min(start + batch_size, len(self)))]
            same = len({im.shape for im in images}) == 1  # one op for the batch (samples)
            groups = [np.stack(images)] if same else [im[None] for im in images]
            yield np.concatenate([resize_images(g, (h, w)) for g in groups])

    def counts(self, n_classes: int) -> list[int]:
        """Images per class, in class order."""
        return np.bincount(self.labels, minlength=n_classes).tolist()


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
    # images the search never sees, scored once for the chosen model (autotl.holdout)
    test: ImageSet | None = None
    test_split: str | None = None  # where they came from: "folder test/", "test_fraction=0.2 ..."
    test_fingerprint: str | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> dict:
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
        }


@dataclass
class _Item:
    rel: str  # relative to DATA_DIR, "/"-separated (or "#index" for arrays)
    label: int
    digest: str  # sha256 of the file bytes / pixel bytes
    path: str | None = None
    array: np.ndarray | None = None


def load_folder(
    path: str | os.PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_per_class: int = 1,
    max_side: int = 1024,
) -> Dataset:
    """Scan DATA_DIR (see module doc), drop unusable files, split, fingerprint."""
    _check_fraction(val_fraction)
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise UsageError(f"data folder {root} {what}; pass a folder of class subfolders ({LAYOUT})")
    parts, split, notes = _layout(root, val_fraction, seed)
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

    jobs: list[tuple[str, int, str, str]] = []
    skipped: list[tuple[str, str]] = []
    for part, folder in parts.items():
        for c in classes[part]:
            files, passed = _walk(root, os.path.join(folder, c))
            jobs += [(part, class_names.index(c), rel, full) for rel, full in files]
            skipped += passed
    with warnings.catch_warnings(), ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        warnings.simplefilter("ignore")  # set here, in the one thread that touches the filters
        results = list(pool.map(lambda job: _check_file(job[3], max_side), jobs))
    found: dict[tuple[str, int], list[_Item]] = {
        (p, k): [] for p in parts for k in range(len(class_names))
    }
    tried = dict.fromkeys(found, 0)
    for (part, label, rel, full), (digest, reason) in zip(jobs, results):
        tried[(part, label)] += 1
        if reason is None:
            found[(part, label)].append(_Item(rel, label, digest, path=full))
        else:
            skipped.append((rel, reason))
    skipped.sort()

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
            if split == "folders"
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
    if split == "folders":
        train = [i for (p, _), items in found.items() if p == "train" for i in items]
        val = [i for (p, _), items in found.items() if p == "val" for i in items]
    else:
        train, val = _stratify(
            [i for items in found.values() for i in items], class_names, val_fraction, seed, notes
        )
    return _finish(class_names, train, val, root, split, skipped, notes, max_side)


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
        if d not in ("train", val_dirs[0], "test")  # test/: autotl.holdout
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
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower() not in _JUNK:
                files.append((_rel(root, os.path.join(dirpath, name)), os.path.join(dirpath, name)))
    return files, passed


def _check_file(path: str, max_side: int) -> tuple[str, str | None]:
    """(sha256 of the bytes, None) if the file decodes, else ("", reason)."""
    try:
        data = _read(path)
        _decode_bytes(data, max_side)
    except BadImage as exc:
        return "", str(exc)
    return hashlib.sha256(data).hexdigest(), None


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
        items.append(_Item(f"#{i}", int(label), digest, array=a))
    notes: list[str] = []
    train, val = _stratify(items, names, val_fraction, seed, notes)
    split = f"stratified, val_fraction={val_fraction:g}, seed={seed}"
    return _finish(names, train, val, source, split, [], notes, 1024)


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
    class_names: list[str],
    train: list[_Item],
    val: list[_Item],
    source: str,
    split: str,
    skipped: list[tuple[str, str]],
    notes: list[str],
    max_side: int,
) -> Dataset:
    """Order, duplicate check, fingerprint, and the two ImageSets."""
    parts = {
        "train": sorted(train, key=lambda i: (i.label, i.rel)),
        "val": sorted(val, key=lambda i: (i.label, i.rel)),
    }
    first: dict[str, tuple[str, _Item]] = {}
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    h.update(json.dumps({"classes": class_names, "split": split}).encode())
    for part, item in sorted(
        ((p, i) for p, items in parts.items() for i in items),
        key=lambda pi: (pi[0], pi[1].label, pi[1].digest),
    ):
        h.update(f"\n{part}\0{item.label}\0{item.digest}".encode())
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
        class_names,
        image_set(parts["train"]),
        image_set(parts["val"]),
        source,
        split,
        h.hexdigest(),
        skipped,
        notes,
    )
