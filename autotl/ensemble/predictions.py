"""Trials' predicted probabilities on a set of images, computed once in batches and cached in the run folder.

What ensemble selection (:mod:`autotl.ensemble`) and the export of an
ensemble check against: each trial's probabilities on the validation images,
the test images and their mirrors (flip TTA), fed at a given size (its own, or
the ensemble's), stored as ``.npy`` (no pickle) under names that change when
the images do, so choosing an ensemble again costs no model run.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from autotl.errors import UsageError
from autotl.run.folder import RunFolder, atomic_write

if TYPE_CHECKING:
    from autotl.backbones.registry import Registry

__all__ = ["Probs", "Sizes", "split_key", "input_sizes", "largest", "predictions"]

Say = Callable[[str], None]


def split_key(name: str, images: Any, study_name: str, fingerprint: Optional[str] = None) -> str:
    """A name for a set of images that changes when they do: the data fingerprint, else their files or pixels."""
    h = hashlib.sha256(f"{study_name}\0{name}\0{fingerprint or ''}\0".encode())
    if fingerprint is None:
        h.update(np.asarray(images.labels, np.int64).tobytes())
        if images.paths is not None:
            for p in images.paths:
                st = Path(p).stat()
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            for a in images.arrays:
                h.update(str(a.shape).encode() + np.ascontiguousarray(a).tobytes())
    return f"{name}-{h.hexdigest()[:12]}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float32), allow_pickle=False)
    atomic_write(path, buf.getvalue())


def _load_npy(path: Path, shape: tuple[int, int]) -> Optional[np.ndarray]:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return a if a.shape == shape and np.isfinite(a).all() else None


Probs = dict[tuple[int, Optional[str]], np.ndarray]
#: Trial number -> the (height, width) its images are fed at: its own input size, or the ensemble's.
Sizes = dict[int, tuple[int, int]]


def input_sizes(
    trials: Sequence[Any], registry: Optional[Registry] = None, plugins: Sequence[str] = ()
) -> Sizes:
    """Each trial's own input size, from its backbone's plugin (no model is loaded)."""
    if registry is None:
        from autotl.backbones.registry import get_registry

        registry = get_registry(list(plugins))
    out = {}
    for t in trials:
        name = t.params["backbone"]
        if name not in registry.backbones:
            raise UsageError(
                f"trial {t.number} used backbone {name!r}, which is not installed here; "
                "install its plugin or pass --plugin MODULE"
            )
        h, w = registry.backbone(name).input_size
        out[t.number] = (int(h), int(w))
    return out


def largest(sizes: Sizes) -> tuple[int, int]:
    """The size an ensemble of models of ``sizes`` takes: the largest, so no member sees an upsampled image."""
    return max(sizes.values(), key=lambda s: (s[0] * s[1], s))


def predictions(
    run: RunFolder,
    models: dict[int, Callable[[], Path]],
    images: Any,
    key: str,
    n_classes: int,
    ttas: Sequence[Optional[str]],
    sizes: Sizes,
    say: Say = lambda _m: None,
) -> Probs:
    """Each trial's probabilities on ``images`` fed at ``sizes[trial]`` (and their mirrors, for ``"flip"`` in
    ``ttas``), from the cache or computed now: one decoding pass per size, every model of that size on each
    batch.  A model resizes what it is fed to its own size, as it does inside an ensemble."""
    shape = (len(images), n_classes)
    out: Probs = {}
    missing = set()
    for trial in models:
        for tta in ttas:
            found = _load_npy(_cached(run, key, sizes[trial], trial, tta), shape)
            if found is None:
                missing.add(trial)
            else:
                out[(trial, tta)] = found
    if missing:
        todo = sorted(missing)
        say(
            f"predicting {len(images)} {key.split('-')[0]} images with trials {', '.join(map(str, todo))}"
        )
        for (trial, tta), probs in _predict(models, todo, images, ttas, sizes).items():
            _save_npy(_cached(run, key, sizes[trial], trial, tta), probs)
            out[(trial, tta)] = probs
    return out


def _cached(
    run: RunFolder, key: str, size: tuple[int, int], trial: int, tta: Optional[str]
) -> Path:
    return run.ensemble_predictions(f"{key}-{size[0]}x{size[1]}", trial, tta)


def _predict(
    models: dict[int, Callable[[], Path]],
    trials: Sequence[int],
    images: Any,
    ttas: Sequence[Optional[str]],
    sizes: Sizes,
) -> Probs:
    import keras

    loaded = {t: keras.saving.load_model(models[t](), safe_mode=True) for t in trials}
    by_size: dict[tuple[int, int], list[int]] = {}
    for t in trials:
        by_size.setdefault(sizes[t], []).append(t)
    chunks: dict[tuple[int, Optional[str]], list[np.ndarray]] = {
        (t, a): [] for t in trials for a in ttas
    }
    for size, group in by_size.items():
        for batch in images.batches(size, 32):
            for t in group:
                for tta in ttas:
                    x = batch[:, :, ::-1, :] if tta == "flip" else batch
                    probs = loaded[t](np.ascontiguousarray(x), training=False)
                    chunks[(t, tta)].append(
                        np.asarray(keras.ops.convert_to_numpy(probs), np.float32)
                    )
    return {k: np.concatenate(v) for k, v in chunks.items()}
