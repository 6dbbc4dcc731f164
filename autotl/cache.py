"""The frozen-feature cache: the backbone's forward pass, computed once.

While the base is frozen and in inference mode it is a fixed function of the
pixels, so every trial with the same backbone, weights, input size and data
would compute the same activations epoch after epoch.  autotl computes them
once per key and trains heads (phase 1) or the unfrozen top blocks (phase 2,
from a block boundary) on the stored arrays.

Entries are ``.npy`` files on disk, memory-mapped when read, written to a
temporary name and renamed into place, so readers never see half an entry,
a crash leaves nothing behind, and two workers building the same entry at
once both end with the same file (a lock file makes the second one wait).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from autotl.spec import BackboneSpec
from autotl.weights import ResolvedWeights

__all__ = ["FeatureCache", "CachedFeatures"]

CACHE_FORMAT = 1


@dataclass
class CachedFeatures:
    """One entry: train and val activations (memory-mapped) and their labels."""

    key: str
    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    built: bool  # computed now, rather than read from disk
    seconds: float


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _augmenter(aug: Any, seed: int) -> Any:
    import keras

    layers = []
    if aug.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if aug.rotation:
        layers.append(keras.layers.RandomRotation(aug.rotation, seed=seed + 1))
    if aug.zoom:
        layers.append(keras.layers.RandomZoom(aug.zoom, seed=seed + 2))
    return keras.Sequential(layers, name="augment")


class FeatureCache:
    """Activations of frozen bases, keyed by everything that determines them."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def key(spec: BackboneSpec, weights_id: str, input_size: tuple[int, int], data_fingerprint: str, cut: Optional[str], augmentation: Any = None) -> str:
        parts = {
            "format": CACHE_FORMAT,
            "backbone": spec.name,
            "weights": weights_id,
            "input_size": list(input_size),
            "preprocessing": [spec.preprocessing.mode, list(spec.preprocessing.scale), list(spec.preprocessing.offset), spec.preprocessing.channel_order],
            "data": data_fingerprint,
            "cut": cut or "pooled",
            "augmentation": augmentation.model_dump() if augmentation is not None and augmentation.enabled else None,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def get(
        self,
        spec: BackboneSpec,
        base: Any,
        weights: ResolvedWeights,
        dataset: Any,
        cut: Optional[str] = None,
        input_size: Optional[tuple[int, int]] = None,
        batch_size: int = 32,
        augmentation: Any = None,
        seed: int = 0,
    ) -> CachedFeatures:
        """Read the entry for ``cut`` (``None``: the pooled output), computing it first if absent."""
        start = time.perf_counter()
        size = input_size or spec.input_size
        weights_id = weights.sha256 or f"{weights.origin}:seed{seed}"
        key = self.key(spec, weights_id, size, dataset.fingerprint, cut, augmentation)
        folder = self.root / key
        built = False
        if not (folder / "meta.json").is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            with _locked(self.root / f"{key}.lock"):
                if not (folder / "meta.json").is_file():
                    self._build(folder, spec, base, dataset, cut, size, batch_size, augmentation, seed, weights_id)
                    built = True
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("train", "train_labels", "val", "val_labels")}
        return CachedFeatures(key, arrays["train"], np.asarray(arrays["train_labels"]), arrays["val"], np.asarray(arrays["val_labels"]), built, time.perf_counter() - start)

    def _build(self, folder: Path, spec: BackboneSpec, base: Any, dataset: Any, cut: Optional[str], size: tuple[int, int], batch_size: int, augmentation: Any, seed: int, weights_id: str) -> None:
        import keras

        from autotl.model import submodel
        from autotl.preprocess import preprocessing_layer

        image = keras.Input((*size, 3))
        x = image
        pre = preprocessing_layer(spec.preprocessing)
        if pre is not None:
            x = pre(x)
        x = submodel(base, None, cut)(x, training=False)
        if cut is None:
            x = keras.layers.GlobalAveragePooling2D()(x)
        extractor = keras.Model(image, x)
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        views = augmentation.views if augmentation is not None and augmentation.enabled else 0
        augment = _augmenter(augmentation, seed) if views else None
        for split in ("train", "val"):
            images = getattr(dataset, split)
            copies = 1 + (views if split == "train" else 0)
            n = len(images)
            out: Optional[np.ndarray] = None
            for copy in range(copies):
                row = copy * n
                for batch in images.batches(size, batch_size):
                    if copy:
                        batch = augment(batch, training=True)
                    feats = np.asarray(extractor(batch, training=False))
                    if out is None:
                        out = np.lib.format.open_memmap(tmp / f"{split}.npy", mode="w+", dtype="float32", shape=(n * copies, *feats.shape[1:]))
                    out[row : row + len(feats)] = feats
                    row += len(feats)
            assert out is not None
            out.flush()
            del out
            np.save(tmp / f"{split}_labels.npy", np.tile(np.asarray(images.labels, dtype="int64"), copies))
        meta = {"backbone": spec.name, "weights": weights_id, "input_size": list(size), "cut": cut, "data": dataset.fingerprint, "views": views, "created": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process renamed its copy first: theirs is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
