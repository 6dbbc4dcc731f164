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
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotl.errors import TrialFailed
from autotl.spec import BackboneSpec
from autotl.weights import ResolvedWeights

__all__ = ["FeatureCache", "CachedFeatures"]

CACHE_FORMAT = 2  # 2: the seed is part of the key only where it changes the activations


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


class _Prefetch:
    """Batches made by a thread up to ``depth`` ahead, from the moment it is created.

    Started before the base is built, decoding overlaps building the base as
    well as running it (Pillow and TensorFlow release the GIL).  An error in
    the thread is raised where the batch would have been taken.
    """

    def __init__(self, batches: Iterator[np.ndarray], depth: int) -> None:
        import queue
        import threading

        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(batches,), name="autotl-decode", daemon=True
        )
        self._thread.start()

    def _run(self, batches: Iterator[np.ndarray]) -> None:
        import queue

        try:
            items: Iterator[Any] = iter(batches)
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(StopIteration())
        except BaseException as exc:  # handed to the consumer
            self._queue.put(exc)

    def __next__(self) -> np.ndarray:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)  # every later call ends the same way
            raise item
        return item

    def __iter__(self) -> _Prefetch:
        return self

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except Exception:  # empty: the thread is finishing
                pass
        self._thread.join()


def _open_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 ``.npy`` file of ``shape``, memory-mapped for writing, its disk space reserved first.

    Without the reservation a full disk shows up as SIGBUS on a page write,
    killing the process; with it, as an OSError (ENOSPC) the CLI reports.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype="float32", shape=shape)
    with open(path, "r+b") as handle:
        os.posix_fallocate(handle.fileno(), 0, os.path.getsize(path))
    return array


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


def _batches(
    dataset: Any, size: tuple[int, int], batch_size: int, views: int
) -> Iterator[np.ndarray]:
    """Every batch a build runs through the base, in order: train (once, then once per augmented view), then val."""
    for split, copies in (("train", 1 + views), ("val", 1)):
        for _copy in range(copies):
            yield from getattr(dataset, split).batches(size, batch_size)


class FeatureCache:
    """Activations of frozen bases, keyed by everything that determines them."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def key(
        spec: BackboneSpec,
        weights_id: str,
        input_size: tuple[int, int],
        data_fingerprint: str,
        cut: Optional[str],
        augmentation: Any = None,
        seed: Optional[int] = None,
    ) -> str:
        """The entry's name: a hash of everything that determines its activations (``seed``: random weights or augmented views)."""
        parts = {
            "format": CACHE_FORMAT,
            "backbone": spec.name,
            "weights": weights_id,
            "seed": seed,
            "input_size": list(input_size),
            "preprocessing": [
                spec.preprocessing.mode,
                list(spec.preprocessing.scale),
                list(spec.preprocessing.offset),
                spec.preprocessing.channel_order,
            ],
            "data": data_fingerprint,
            "cut": cut or "pooled",
            "augmentation": augmentation.model_dump()
            if augmentation is not None and augmentation.enabled
            else None,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def get(
        self,
        spec: BackboneSpec,
        base: Callable[[], Any],
        weights: ResolvedWeights,
        dataset: Any,
        cut: Optional[str] = None,
        input_size: Optional[tuple[int, int]] = None,
        batch_size: int = 32,
        augmentation: Any = None,
        seed: int = 0,
        prefetch: Callable[[Any], Sequence[str]] = lambda _base: (),
    ) -> CachedFeatures:
        """Read the entry for ``cut`` (``None``: the pooled output), computing it first if absent.

        ``base()`` is only called when something must be computed.  ``prefetch(base)``
        names more cuts to compute in the same forward pass (the block boundaries a
        later fine-tuning trial may start from), so the data crosses the base once.
        """
        start = time.perf_counter()
        size = input_size or spec.input_size
        weights_id = weights.sha256 or weights.origin
        views = augmentation.views if augmentation is not None and augmentation.enabled else 0
        # the seed draws random weights and augmented views; pretrained features do not depend on it
        seeded = seed if weights.argument is None or views else None

        def folder_of(c: Optional[str]) -> Path:
            return self.root / self.key(
                spec, weights_id, size, dataset.fingerprint, c, augmentation, seeded
            )

        folder = folder_of(cut)
        built = False
        if not (folder / "meta.json").is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            with _locked(self.root / f"{folder.name}.lock"):
                if not (folder / "meta.json").is_file():
                    # decoding starts now, while the base is built; up to 256 MB of batches ahead
                    depth = int(np.clip(2**28 // (batch_size * size[0] * size[1] * 3 * 4), 2, 16))
                    stream = _Prefetch(_batches(dataset, size, batch_size, views), depth)
                    try:
                        model = base()
                        cuts = [cut] + [
                            c
                            for c in prefetch(model)
                            if c != cut and not (folder_of(c) / "meta.json").is_file()
                        ]
                        self._build(
                            {c: folder_of(c) for c in cuts},
                            spec,
                            model,
                            dataset,
                            size,
                            stream,
                            views,
                            augmentation,
                            seed,
                            weights_id,
                        )
                    finally:
                        stream.close()
                    built = True
        arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r")
            for name in ("train", "train_labels", "val", "val_labels")
        }
        return CachedFeatures(
            folder.name,
            arrays["train"],
            np.asarray(arrays["train_labels"]),
            arrays["val"],
            np.asarray(arrays["val_labels"]),
            built,
            time.perf_counter() - start,
        )

    def _build(
        self,
        folders: dict[Optional[str], Path],
        spec: BackboneSpec,
        base: Any,
        dataset: Any,
        size: tuple[int, int],
        stream: Iterator[np.ndarray],
        views: int,
        augmentation: Any,
        seed: int,
        weights_id: str,
    ) -> None:
        """Run ``stream`` (the batches :func:`_batches` makes) through ``base`` and store the activations at every cut."""
        import keras
        import tensorflow as tf

        from autotl.preprocess import apply_preprocessing

        image = keras.Input((*size, 3))
        cuts = list(folders)
        bottom = keras.Model(
            base.input, [base.get_layer(c).output if c else base.output for c in cuts]
        )
        outs = bottom(apply_preprocessing(spec.preprocessing, image), training=False)
        outs = [
            keras.layers.GlobalAveragePooling2D()(o) if c is None else o for c, o in zip(cuts, outs)
        ]
        extractor = keras.Model(image, outs)
        # traced once for every batch size (predict_on_batch traces again for the last, smaller batch)
        forward = tf.function(
            lambda z: extractor(z, training=False),
            input_signature=[tf.TensorSpec([None, *size, 3], tf.float32)],
        )
        tmps = {c: f.with_name(f"{f.name}.tmp{os.getpid()}") for c, f in folders.items()}
        try:
            self._fill(tmps, cuts, forward, dataset, stream, views, augmentation, seed, spec.name)
        except BaseException:  # a failed or interrupted build leaves nothing behind
            for tmp in tmps.values():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        for c, tmp in tmps.items():
            meta = {
                "backbone": spec.name,
                "weights": weights_id,
                "input_size": list(size),
                "cut": c,
                "data": dataset.fingerprint,
                "views": views,
                "created": time.time(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            try:
                os.replace(tmp, folders[c])
            except OSError:  # another process renamed its copy first: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _fill(
        tmps: dict[Optional[str], Path],
        cuts: list[Optional[str]],
        forward: Any,
        dataset: Any,
        stream: Iterator[np.ndarray],
        views: int,
        augmentation: Any,
        seed: int,
        backbone: str,
    ) -> None:
        """Write every split's activations at every cut into the temporary folders ``tmps``; non-finite ones fail the trial."""
        for tmp in tmps.values():
            tmp.mkdir(parents=True, exist_ok=True)
        augment = _augmenter(augmentation, seed) if views else None
        for split in ("train", "val"):
            images = getattr(dataset, split)
            copies = 1 + (views if split == "train" else 0)
            n = len(images)
            outputs: dict[Optional[str], np.ndarray] = {}
            for copy in range(copies):
                row = copy * n
                while row < (copy + 1) * n:
                    batch = next(stream)
                    if copy:
                        batch = augment(batch, training=True)
                    result = forward(np.asarray(batch))
                    for c, feats in zip(
                        cuts, result if isinstance(result, (list, tuple)) else [result]
                    ):
                        feats = np.asarray(feats)
                        if not np.isfinite(feats).all():
                            raise TrialFailed(
                                f"backbone {backbone} gives non-finite features; check its weights file and preprocessing"
                            )
                        if c not in outputs:
                            outputs[c] = _open_array(
                                tmps[c] / f"{split}.npy", (n * copies, *feats.shape[1:])
                            )
                        outputs[c][row : row + len(feats)] = feats
                    row += len(batch)
            for c, out in outputs.items():
                out.flush()
                np.save(
                    tmps[c] / f"{split}_labels.npy",
                    np.tile(np.asarray(images.labels, dtype="int64"), copies),
                )
            del outputs
