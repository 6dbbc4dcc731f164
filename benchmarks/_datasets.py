"""The real image sets the benchmarks measure on, built from what is on the machine (nothing is downloaded).

One place for every benchmark's data, so two benchmarks that say "digits" or
"rotations" mean the same images:

``hymenoptera``
    ``../shared/data/hymenoptera`` as it is: ants and bees, 245 train / 153 val
    photographs, close to ImageNet (both are ImageNet classes' neighbours).
``digits``
    scikit-learn's bundled 1,797 scanned 8x8 digits, 10 classes, as
    ``autotl search --sample digits`` loads them (dark ink on white).
``rotations``
    the hymenoptera photographs turned by 0, 90, 180 and 270 degrees, one
    class per angle, in hymenoptera's train/ and val/: what is in the
    picture no longer says the class.
``distortions``
    224 px crops of the hymenoptera photographs, each put through one of eight
    image-processing operations (none, blur, JPEG at quality 10, noise,
    posterising, unsharp masking, pixelation, a median filter); the class is the
    operation.  Far from ImageNet: its classifiers are trained to ignore exactly
    these low-level differences, so frozen pooled features carry little of them.
``photo_patches``
    64 px patches of the two photographs scikit-learn ships (the class is the photograph).

Each set is either a folder of class subfolders (``folder(name, root)``), or,
for the ``autotl.search`` keyword arguments, ``search_data(name, root)``
(``{"data": folder}`` or ``{"sample": "digits"}``).  ``items(name)`` gives
``class -> [(file name, PIL image or path)]`` for benchmarks that build
their own folders (``benchmarks/doctor.py`` plants label errors into it).
Built folders are reused when complete (a ``.complete`` marker).

    from _datasets import folder, search_data   # from a script in benchmarks/
    autotl.search(**search_data("rotations", root), out=..., space=...)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFilter, ImageOps

__all__ = [
    "SHARED",
    "HYMENOPTERA",
    "WEIGHTS",
    "SETS",
    "NAMES",
    "items",
    "rotations",
    "folder",
    "search_data",
    "write",
]

SHARED = Path(os.environ.get("AUTOTL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HYMENOPTERA = SHARED / "data" / "hymenoptera"
WEIGHTS = os.environ.get("AUTOTL_WEIGHTS_DIR", str(SHARED / "weights"))
Item = Union[Image.Image, Path]
Items = dict[str, list[tuple[str, Item]]]


def _unit(text: str, seed: int = 0) -> float:
    """A number in [0, 1) from ``text``: the same on every machine."""
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:8], 16) / 2**32


def _photos() -> list[Path]:
    """Every hymenoptera photograph (train and val), in a fixed order."""
    return sorted(
        f for f in HYMENOPTERA.glob("*/*/*") if f.suffix.lower() in (".jpg", ".jpeg", ".png")
    )


def hymenoptera_items() -> Items:
    """class -> [(split_name, file)] of the whole shared set (train and val together)."""
    out: Items = {}
    for f in sorted(HYMENOPTERA.glob("*/*/*")):
        out.setdefault(f.parent.name, []).append((f"{f.parent.parent.name}_{f.name}", f))
    return out


def digits_items(dark_ink: bool = True) -> Items:
    """The 1,797 digits as RGB images; ``dark_ink`` as ``--sample digits`` loads them (False: light on dark)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out: Items = {}
    for i, (x, y) in enumerate(zip(d.images, d.target)):
        pixels = (x * (255 / 16)).round().astype("uint8")
        image = Image.fromarray(255 - pixels if dark_ink else pixels).convert("RGB")
        out.setdefault(str(y), []).append((f"{i:04d}.png", image))
    return out


def photo_patches_items() -> Items:
    """64 px patches, side by side, of the two photographs scikit-learn ships: class = the photograph."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    out: Items = {}
    for name, image in zip(data.filenames, data.images):
        cls = Path(name).stem
        for r in range(0, image.shape[0] - 64 + 1, 64):
            for c in range(0, image.shape[1] - 64 + 1, 64):
                patch = Image.fromarray(image[r : r + 64, c : c + 64])
                out.setdefault(cls, []).append((f"{cls}_{r:03d}_{c:03d}.png", patch))
    return out


def rotations(root: Path) -> Path:
    """The hymenoptera photographs turned by 0, 90, 180 and 270 degrees, one class per angle, in
    hymenoptera's own train/ and val/ (the i-th photo of a split by ``(i % 4) * 90``)."""
    target = Path(root) / "rotations"
    if (target / ".complete").exists():
        return target
    for split in ("train", "val"):
        files = sorted((HYMENOPTERA / split).rglob("*.jp*g"))
        for i, f in enumerate(files):
            angle = (i % 4) * 90
            out = target / split / f"r{angle:03d}" / f"{f.parent.name}_{i:04d}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(f) as im:
                ImageOps.exif_transpose(im).convert("RGB").rotate(angle, expand=True).save(out)
    (target / ".complete").write_text("done\n")
    return target


def _jpeg(im: Image.Image) -> Image.Image:
    import io

    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=10)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _noise(im: Image.Image, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(im, np.float32) + rng.normal(0, 12, (im.height, im.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype("uint8"))


def _pixelate(im: Image.Image) -> Image.Image:
    small = im.resize((im.width // 3, im.height // 3), Image.Resampling.BOX)
    return small.resize(im.size, Image.Resampling.NEAREST)


#: The operations of ``distortions``, by class name: each takes the crop and a seed.
OPERATIONS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "none": lambda im, _s: im,
    "blur": lambda im, _s: im.filter(ImageFilter.GaussianBlur(1.5)),
    "jpeg": lambda im, _s: _jpeg(im),
    "noise": _noise,
    "posterize": lambda im, _s: ImageOps.posterize(im, 3),
    "sharpen": lambda im, _s: im.filter(
        ImageFilter.UnsharpMask(radius=2, percent=250, threshold=0)
    ),
    "pixelate": lambda im, _s: _pixelate(im),
    "median": lambda im, _s: im.filter(ImageFilter.MedianFilter(5)),
}


def distortions_items(crops: int = 4, size: int = 224) -> Items:
    """``crops`` crops of ``size`` px from each hymenoptera photograph (its corners' region, by a seeded
    hash), each through the operation a hash of its name picks, about equally many per class."""
    names = list(OPERATIONS)
    out: Items = {n: [] for n in names}
    k = 0
    for i, f in enumerate(_photos()):
        with Image.open(f) as im:
            photo = ImageOps.exif_transpose(im).convert("RGB")
        if min(photo.size) < size:
            photo = ImageOps.fit(photo, (size, size))
        for c in range(crops):
            left = int(_unit(f"x{i}/{c}") * (photo.width - size + 1))
            top = int(_unit(f"y{i}/{c}") * (photo.height - size + 1))
            crop = photo.crop((left, top, left + size, top + size))
            op = names[(k + int(_unit(f"op{i}") * len(names))) % len(names)]
            k += 1
            out[op].append((f"{f.parent.name}_{i:04d}_{c}.png", OPERATIONS[op](crop, k)))
    return out


#: Every set's items, by name.
SETS: dict[str, Callable[[], Items]] = {
    "hymenoptera": hymenoptera_items,
    "digits": digits_items,
    "distortions": distortions_items,
    "photo_patches": photo_patches_items,
}


#: Every set ``folder`` builds.
NAMES = ("hymenoptera", "digits", "rotations", "distortions", "photo_patches")


def items(name: str) -> Items:
    """``class -> [(file name, image or path)]`` of set ``name`` (any but rotations)."""
    if name not in SETS:
        raise SystemExit(f"unknown set {name!r}; choose from {', '.join([*SETS, 'rotations'])}")
    return SETS[name]()


def save(item: Item, target: Path) -> Path:
    """Write one image (a path is copied as it is, an image as PNG or JPEG by ``target``'s suffix)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(item, Path):
        shutil.copy(item, target)
    else:
        item.save(target, **({"quality": 95} if target.suffix == ".jpg" else {}))
    return target


def write(source: Items, root: Path) -> Path:
    """``source`` as a folder of class subfolders at ``root`` (reused when a build completed there)."""
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for cls, entries in source.items():
        for name, item in entries:
            save(item, root / cls / name)
    (root / ".complete").write_text("done\n")
    return root


def folder(name: str, root: Path) -> Path:
    """Set ``name`` as a folder of class subfolders (hymenoptera and rotations: with train/ and val/)."""
    if name == "hymenoptera":
        return HYMENOPTERA
    if name == "rotations":
        return rotations(root)
    return write(items(name), Path(root) / name)


def search_data(name: str, root: Path) -> dict[str, str]:
    """``autotl.search``'s keyword for set ``name``: ``{"sample": "digits"}``, else ``{"data": folder}``."""
    return {"sample": "digits"} if name == "digits" else {"data": str(folder(name, root))}
