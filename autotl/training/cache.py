"""The frozen-feature cache: the backbone's forward pass, computed once.

While the base is frozen and in inference mode it is a fixed function of the
pixels, so every trial with the same backbone, weights, input size and data
would compute the same activations epoch after epoch.  autotl computes them
once per key and trains heads (phase 1) or the unfrozen top blocks (phase 2,
from a block boundary) on the stored arrays.

Entries are ``.npy`` files on disk in float16 (half the bytes of float32; the
cached path matches the full float32 model within ``FLOAT16_TOLERANCE`` on
probabilities), read by rows (:mod:`autotl.training.npyfile`), never held whole in
memory.  An entry whose activations do not fit float16 is stored in float32.
Before a build the entry's bytes are estimated: one that does not fit the disk
(or ``--cache-budget``) is refused in one line, or, for a block boundary that
only fine-tuning would use, not cached (fine-tuning then streams from pixels).
Entries are written to a temporary name and renamed into place, so readers
never see half an entry, a crash or a full disk leaves nothing behind, and two
workers building the same entry at once both end with the same file (a lock
file makes the second one wait).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotl.backbones.weights import ResolvedWeights
from autotl.errors import TrialFailed, UsageError
from autotl.spec import BackboneSpec
from autotl.training.npyfile import NpyRows, NpyWriter

__all__ = [
    "FeatureCache",
    "CachedFeatures",
    "BuildStopped",
    "FLOAT16_TOLERANCE",
    "MIXED_TOLERANCE",
    "parse_bytes",
    "extractor",
]

CACHE_FORMAT = 3  # 3: float16 by default, dtype and compute policy in the key
#: The cached path (float16 activations) against the full float32 model, on class probabilities.
FLOAT16_TOLERANCE = 2e-3
#: The same with ``mixed_precision`` (the forward pass itself in float16): looser, an option for GPUs.
MIXED_TOLERANCE = 2e-2
DTYPES = ("float16", "float32")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_RESERVE = 64 * 2**20  # left free on the cache's disk for the study and the run folder
Say = Callable[[str], None]


@dataclass
class CachedFeatures:
    """One entry: train and val activations (read by rows) and their labels."""

    key: str
    train: NpyRows
    train_labels: np.ndarray
    val: NpyRows
    val_labels: np.ndarray
    built: bool  # computed now, rather than read from disk
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)  # the build: images, seconds, images/s, ...


def parse_bytes(text: str | int | None) -> Optional[int]:
    """``"20GB"``, ``"500 MiB"``, ``"1.5T"`` or a number of bytes -> bytes (None stays None); one line if unreadable."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    if not m:
        raise UsageError(f"cannot read the size {text!r}; write it like 20GB, 500MB or 1.5TB")
    value, unit, binary = float(m.group(1)), m.group(2), m.group(3)
    return int(value * (1024 if binary else 1000) ** " kmgt".index(unit or " "))


def _gb(n: float) -> str:
    """A size for people: 393 kB, 12.4 MB, 7.58 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1e3:.0f} kB"


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

    Started before the base is built, decoding (in the decoding processes) and
    resizing overlap building the base as well as running it.  An error in the
    thread is raised where the batch would have been taken.
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
                    close = getattr(items, "close", None)
                    if close is not None:
                        close()  # cancels the decoding tasks not yet started
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


def _mixed_copy(base: Any) -> Any:
    """``base`` with float16 computation (float32 variables): Keras' ``mixed_float16`` policy, same weights."""
    import keras

    policy = keras.DTypePolicy("mixed_float16")

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(base, clone_function=clone)
    copy.set_weights(base.get_weights())
    return copy


def device() -> str:
    """Where the forward pass runs: the first GPU TensorFlow sees (``--gpus`` sets which), else the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "/CPU:0"


def extractor(
    spec: BackboneSpec,
    base: Any,
    cuts: Sequence[Optional[str]],
    size: tuple[int, int],
    mixed_precision: bool = False,
    dtype: str = "float32",
) -> Any:
    """The cache's forward pass (a ``tf.function``), traced once for every batch size: float32 pixels ``(b, h, w, 3)`` 0..255 ->
    ``(activations at every cut in dtype, all finite, largest magnitude)`` (cut ``None``: the pooled output).

    The conversion and the checks run in the graph, so the build's own thread
    only writes bytes.  Benchmarks time it as the floor.
    """
    import keras
    import tensorflow as tf

    from autotl.backbones.preprocess import apply_preprocessing

    net = _mixed_copy(base) if mixed_precision else base
    image = keras.Input((*size, 3))
    bottom = keras.Model(net.input, [net.get_layer(c).output if c else net.output for c in cuts])
    outs = bottom(apply_preprocessing(spec.preprocessing, image), training=False)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    outs = [
        keras.layers.GlobalAveragePooling2D()(o) if c is None else o for c, o in zip(cuts, outs)
    ]
    model = keras.Model(image, outs)
    where, out = device(), tf.as_dtype(dtype)

    @tf.function(input_signature=[tf.TensorSpec([None, *size, 3], tf.float32)])
    def forward(z: Any) -> tuple[list[Any], Any, Any]:
        with tf.device(where):
            result = model(z, training=False)
            result = [
                tf.cast(r, tf.float32)
                for r in (result if isinstance(result, (list, tuple)) else [result])
            ]
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(r)) for r in result])
            peak = tf.reduce_max([tf.reduce_max(tf.abs(r)) for r in result])
            return [tf.cast(r, out) for r in result], finite, peak

    return forward


@dataclass(frozen=True)
class _Job:
    """What one build computes, besides the cuts: the backbone, input size, batch size and augmented views."""

    spec: BackboneSpec
    size: tuple[int, int]
    batch_size: int
    views: int
    augmentation: Any
    seed: int
    weights_id: str
    #: Asked before every batch: True abandons the build (:class:`BuildStopped`), leaving nothing behind.
    stop: Callable[[], bool] = field(default=lambda: False, compare=False)

    def stream(self, dataset: Any) -> _Prefetch:
        """The build's batches, decoded ahead from now on (up to 64 MB of resized batches: enough to
        keep the forward pass fed, since the decoding processes work a few chunks ahead too)."""
        h, w = self.size
        depth = int(np.clip(2**26 // (self.batch_size * h * w * 3 * 4), 2, 8))
        return _Prefetch(_batches(dataset, self.size, self.batch_size, self.views), depth)


class _Overflow(Exception):
    """Activations beyond float16's range: the entry is built again in float32."""


class BuildStopped(Exception):
    """A build abandoned because its ``stop()`` said so (Ctrl-C once): nothing of it was kept."""


class FeatureCache:
    """Activations of frozen bases, keyed by everything that determines them.

    ``dtype`` is how activations are stored (float16, or float32 for exact
    entries); ``budget`` caps the bytes the cache folder may hold (None: the
    disk's free space); ``mixed_precision`` runs the forward pass in float16
    (a GPU option); ``warn`` receives warnings (an entry not cached).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        dtype: str = "float16",
        budget: Optional[int] = None,
        mixed_precision: bool = False,
        warn: Optional[Say] = None,
    ) -> None:
        if dtype not in DTYPES:
            raise UsageError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.root = Path(root)
        self.dtype = dtype
        self.budget = budget
        self.mixed_precision = mixed_precision
        self.warn = warn or (lambda _m: None)

    def key(
        self,
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
            "dtype": self.dtype,
            "compute": "mixed_float16" if self.mixed_precision else "float32",
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
        say: Optional[Say] = None,
        required: bool = True,
        stop: Callable[[], bool] = lambda: False,
    ) -> Optional[CachedFeatures]:
        """Read the entry for ``cut`` (``None``: the pooled output), computing it first if absent.

        ``base()`` is only called when something must be computed.  ``prefetch(base)``
        names more cuts to compute in the same forward pass (the block boundaries a
        later fine-tuning trial may start from), so the data crosses the base once;
        those that would not fit the disk or the budget are left out (a warning).
        An entry for ``cut`` that would not fit raises a one-line UsageError, or
        with ``required=False`` returns None (the caller streams instead).
        ``say`` follows the build: images done, images/s and time left.  ``stop()`` is asked
        before every batch: when it says so the build is abandoned (:class:`BuildStopped`), so
        a Ctrl-C does not wait for an hour-long build.
        """
        start = time.perf_counter()
        job = self._job(spec, weights, input_size, batch_size, augmentation, seed=seed, stop=stop)
        folder_of = self._folder_of(job, weights, dataset.fingerprint)
        folder = folder_of(cut)
        built = False
        if not (folder / "meta.json").is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            with _locked(self.root / f"{folder.name}.lock"):
                if not (folder / "meta.json").is_file():
                    if not self._compute(
                        folder_of=folder_of,
                        cut=cut,
                        base=base,
                        dataset=dataset,
                        prefetch=prefetch,
                        job=job,
                        say=say,
                        required=required,
                    ):
                        return None
                    built = True
        return self._open(folder, built, time.perf_counter() - start)

    def _open(self, folder: Path, built: bool, seconds: float) -> CachedFeatures:
        meta = json.loads((folder / "meta.json").read_text())
        return CachedFeatures(
            key=folder.name,
            train=NpyRows(folder / "train.npy"),
            train_labels=np.load(folder / "train_labels.npy"),
            val=NpyRows(folder / "val.npy"),
            val_labels=np.load(folder / "val_labels.npy"),
            built=built,
            seconds=seconds,
            stats=meta.get("build", {}),
        )

    @staticmethod
    def _job(
        spec: BackboneSpec,
        weights: ResolvedWeights,
        input_size: Optional[tuple[int, int]],
        batch_size: int,
        augmentation: Any,
        seed: int,
        stop: Callable[[], bool],
    ) -> _Job:
        """What building an entry needs: the input size, augmented views and seed, the weights' identity."""
        views = augmentation.views if augmentation is not None and augmentation.enabled else 0
        size = input_size or spec.input_size
        return _Job(
            spec=spec,
            size=(int(size[0]), int(size[1])),
            batch_size=batch_size,
            views=views,
            augmentation=augmentation,
            seed=seed,
            weights_id=weights.sha256 or weights.origin,
            stop=stop,
        )

    def _folder_of(
        self, job: _Job, weights: ResolvedWeights, fingerprint: str
    ) -> Callable[[Optional[str]], Path]:
        """The entry folder of each cut for this job and data."""
        # the seed draws random weights and augmented views; pretrained features do not depend on it
        seeded = job.seed if weights.argument is None or job.views else None

        def folder_of(cut: Optional[str]) -> Path:
            return self.root / self.key(
                spec=job.spec,
                weights_id=job.weights_id,
                input_size=job.size,
                data_fingerprint=fingerprint,
                cut=cut,
                augmentation=job.augmentation,
                seed=seeded,
            )

        return folder_of

    def _compute(
        self,
        folder_of: Callable[[Optional[str]], Path],
        cut: Optional[str],
        base: Callable[[], Any],
        dataset: Any,
        prefetch: Callable[[Any], Sequence[str]],
        job: _Job,
        say: Optional[Say],
        required: bool,
    ) -> bool:
        """Build the entry for ``cut`` and the prefetched ones that fit; False when ``cut`` itself does not fit."""
        import tensorflow  # noqa: F401  here first: importing it in two threads at once breaks it

        stream = job.stream(dataset)  # decoding starts now, while the base is built
        try:
            model = base()
            extra = [
                c
                for c in prefetch(model)
                if c != cut and not (folder_of(c) / "meta.json").is_file()
            ]
            cuts = self._fitting([cut, *extra], model, dataset, job.views, required)
            if cut not in cuts:
                return False
            folders = {c: folder_of(c) for c in cuts}
            build = functools.partial(self._build, folders, model, dataset, job=job, say=say)
            try:
                build(stream=stream, dtype=self.dtype)
            except _Overflow:
                stream.close()
                stream = job.stream(dataset)
                self.warn(f"{job.spec.name} activations exceed float16's range: cached in float32")
                build(stream=stream, dtype="float32")
        finally:
            stream.close()
        return True

    def entry_bytes(self, model: Any, cut: Optional[str], rows: int, dtype: str = "") -> int:
        """Bytes of one entry of ``rows`` images at ``cut`` of ``model`` (features and labels)."""
        shape = (model.output if cut is None else model.get_layer(cut).output).shape
        per_row = int(shape[-1]) if cut is None else int(np.prod([int(s) for s in shape[1:]]))
        return rows * (per_row * np.dtype(dtype or self.dtype).itemsize + 8) + 1024

    def room(self) -> int:
        """Bytes the cache may still take: the disk's free space (less a reserve), capped by the budget."""
        free = shutil.disk_usage(self.root).free - _RESERVE
        if self.budget is None:
            return free
        used = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        return min(free, self.budget - used)

    def _fitting(
        self, cuts: list[Optional[str]], model: Any, dataset: Any, views: int, required: bool
    ) -> list[Optional[str]]:
        """``cuts`` that fit the room, the first (the one asked for) first; one line when it does not fit."""
        rows = len(dataset.train) * (1 + views) + len(dataset.val)
        room = self.room()
        need = self.entry_bytes(model, cuts[0], rows)
        where = f"{self.root} (free {_gb(max(room, 0))}" + (
            f", --cache-budget {_gb(self.budget)})" if self.budget is not None else ")"
        )
        if need > room:
            what = "pooled features" if cuts[0] is None else f"activations at {cuts[0]}"
            if required:
                raise UsageError(
                    f"no space left for the feature cache: the {what} of {rows:,} images need {_gb(need)} "
                    f"but {where} cannot take them; free some space, pass --cache-dir on a bigger disk "
                    "or raise --cache-budget"
                )
            self.warn(
                f"not caching the {what} ({_gb(need)}; {where}): fine-tuning from there streams from the images"
            )
            return []
        kept, room = [cuts[0]], room - need
        for c in cuts[1:]:
            more = self.entry_bytes(model, c, rows)
            if more <= room:
                kept.append(c)
                room -= more
            else:
                self.warn(
                    f"not caching the activations at {c} ({_gb(more)}; {where}): fine-tuning from there streams from the images"
                )
        return kept

    def _build(
        self,
        folders: dict[Optional[str], Path],
        model: Any,
        dataset: Any,
        stream: Iterator[np.ndarray],
        job: _Job,
        dtype: str,
        say: Optional[Say],
    ) -> None:
        """Run ``stream`` (the batches :func:`_batches` makes) through the base and store the activations at every cut."""
        forward = extractor(job.spec, model, list(folders), job.size, self.mixed_precision, dtype)
        forward.get_concrete_function()  # traced before the clock starts: a fixed cost, not throughput
        tmps = {c: f.with_name(f"{f.name}.tmp{os.getpid()}") for c, f in folders.items()}
        try:
            stats = _fill(
                tmps=tmps,
                forward=forward,
                dataset=dataset,
                stream=stream,
                job=job,
                dtype=dtype,
                say=say,
            )
        except BaseException as exc:  # a failed or interrupted build leaves nothing behind
            for tmp in tmps.values():
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UsageError(
                    f"the disk of the feature cache {self.root} filled up during the build "
                    f"({exc.strerror}); nothing of it was kept: free some space, pass --cache-dir "
                    "on a bigger disk or set --cache-budget"
                ) from None
            raise
        for c, tmp in tmps.items():
            meta = {
                "backbone": job.spec.name,
                "weights": job.weights_id,
                "input_size": list(job.size),
                "cut": c,
                "data": dataset.fingerprint,
                "views": job.views,
                "dtype": dtype,
                "compute": "mixed_float16" if self.mixed_precision else "float32",
                "created": time.time(),
                "build": {**stats, "cuts": [x or "pooled" for x in folders]},
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            try:
                os.replace(tmp, folders[c])
            except OSError:  # another process renamed its copy first: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)


class _Meter:
    """Images per second and time left of a build, said every few seconds."""

    def __init__(self, total: int, say: Optional[Say]) -> None:
        self.total, self.say, self.done = total, say, 0
        self.start = self.last = time.perf_counter()
        self.forward = 0.0

    def add(self, n: int) -> None:
        first, self.done = not self.done, self.done + n
        now = time.perf_counter()
        if self.say is not None and (first or now - self.last > 2.0 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            self.say(
                f"features {self.done:,}/{self.total:,} images, {rate:,.0f} img/s, "
                f"{int(left // 60)}:{int(left % 60):02d} left"
            )

    def stats(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.start
        return {
            "images": self.done,
            "seconds": round(seconds, 3),
            "images_per_second": round(self.done / max(seconds, 1e-9), 1),
            "forward_seconds": round(self.forward, 3),
            "device": device(),
        }


def _fill(
    tmps: dict[Optional[str], Path],
    forward: Any,
    dataset: Any,
    stream: Iterator[np.ndarray],
    job: _Job,
    dtype: str,
    say: Optional[Say],
) -> dict[str, Any]:
    """Write every split's activations at every cut into the temporary folders ``tmps``, batch by batch; non-finite
    ones fail the trial.  Returns the build's figures (images, seconds, images/s, time in the forward pass)."""
    for tmp in tmps.values():
        tmp.mkdir(parents=True, exist_ok=True)
    cuts = list(tmps)
    augment = _augmenter(job.augmentation, job.seed) if job.views else None
    meter = _Meter(len(dataset.train) * (1 + job.views) + len(dataset.val), say)
    for split in ("train", "val"):
        images = getattr(dataset, split)
        copies = 1 + (job.views if split == "train" else 0)
        n = len(images)
        writers: dict[Optional[str], NpyWriter] = {}
        try:
            for copy in range(copies):
                row = copy * n
                while row < (copy + 1) * n:
                    if job.stop():
                        raise BuildStopped(f"the build of {job.spec.name}'s features was stopped")
                    batch = next(stream)
                    if copy and augment is not None:  # copies after the first exist only with views
                        batch = augment(batch, training=True)
                    began = time.perf_counter()
                    result, finite, peak = forward(np.asarray(batch))
                    result = [np.asarray(r) for r in result]
                    meter.forward += time.perf_counter() - began
                    _check(bool(finite), float(peak), dtype, job.spec.name)
                    for c, feats in zip(cuts, result):
                        if c not in writers:
                            shape = (n * copies, *feats.shape[1:])
                            writers[c] = NpyWriter(tmps[c] / f"{split}.npy", shape, dtype)
                        writers[c].append(feats)
                    row += len(batch)
                    meter.add(len(batch))
            for w in writers.values():
                w.close()
        finally:
            for w in writers.values():
                w.abort()
        for c in cuts:
            np.save(
                tmps[c] / f"{split}_labels.npy",
                np.tile(np.asarray(images.labels, dtype="int64"), copies),
            )
    return meter.stats()


def _check(finite: bool, peak: float, dtype: str, backbone: str) -> None:
    """Non-finite activations fail the trial; ones beyond float16's range ask for a float32 entry."""
    if not finite:
        raise TrialFailed(
            f"backbone {backbone} gives non-finite features; check its weights file and preprocessing"
        )
    if dtype == "float16" and peak > _FLOAT16_MAX:
        raise _Overflow()
