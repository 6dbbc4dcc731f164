"""Pooled features of every image to check, from the frozen-feature cache, and the default backbone.

The search's own cache entry (train and val, keyed by the data fingerprint)
holds what a check needs for those splits, so a check after a search, or a
search after ``autotl doctor`` on the same run folder, computes nothing twice.
Test images are never in the search's entry (the search must not see them):
they get an entry of their own, keyed by the test split's fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from autotl.errors import UsageError

if TYPE_CHECKING:
    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import ResolvedWeights, WeightsSource
    from autotl.data.dataset import Dataset, ImageSet
    from autotl.spec import BackboneSpec
    from autotl.training.cache import FeatureCache

__all__ = ["pooled_features", "default_backbone", "multiply_adds"]

Say = Callable[[str], None]
BLOCK = 8192  # rows copied from the cache at a time


def pooled_features(
    dataset: Dataset,
    spec: BackboneSpec,
    weights: ResolvedWeights,
    cache: FeatureCache,
    base: Callable[[], Any],
    augmentation: Any = None,
    say: Optional[Say] = None,
) -> np.ndarray:
    """``(images, channels)`` in the cache's dtype (float16 by default: half the memory, and every step
    computes in float32 a block at a time): train, val, then test rows, in the order the splits store them.

    ``augmentation`` is the search space's, so its entry (whose training rows
    hold augmented views after the originals) is found rather than built again.
    """
    feats = cache.get(spec, base, weights, dataset, None, augmentation=augmentation, say=say)
    assert feats is not None  # required (the default): built, never None
    parts = [(feats.train, 0, len(dataset.train)), (feats.val, 0, len(feats.val))]
    if dataset.test is not None and len(dataset.test):
        held = cache.get(spec, base, weights, _test_view(dataset), None, say=say)
        assert held is not None
        cut = len(held.train)
        parts += [(held.train, 0, cut), (held.val, 0, len(dataset.test) - cut)]
    out = np.empty((sum(stop for _, _, stop in parts), feats.val.shape[1]), feats.val.dtype)
    row = 0
    for rows, start, stop in parts:  # a block at a time: the cache is never read whole into a copy
        for first in range(start, stop, BLOCK):
            last = min(first + BLOCK, stop)
            out[row : row + last - first] = rows[first:last]
            row += last - first
    return out


@dataclasses.dataclass
class _TestView:
    """The test split as the cache takes a data set (two non-empty parts and a fingerprint)."""

    train: ImageSet
    val: ImageSet
    fingerprint: str


def _test_view(dataset: Dataset) -> _TestView:
    from autotl.data.holdout import subset

    test = dataset.test
    assert test is not None
    n = len(test)
    cut = max(n - 1, 1)  # one image may sit in both parts: the rows past len(test) are dropped
    key = hashlib.sha256(f"autotl-health-test\n{dataset.test_fingerprint}".encode()).hexdigest()
    return _TestView(subset(test, range(cut)), subset(test, range(min(cut, n - 1), n)), key)


def multiply_adds(spec: BackboneSpec) -> int:
    """Multiply-adds of one forward pass of ``spec``'s base at its input size (built without weights)."""
    import keras

    base = spec.build((*spec.input_size, 3), None)
    total = 0
    for layer in base.layers:
        kernel = getattr(layer, "kernel_size", None)
        if kernel is None or not hasattr(layer, "output"):
            continue
        out = layer.output.shape
        spatial = int(np.prod([int(s) for s in out[1:-1]]))
        k = int(np.prod(kernel))
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            total += spatial * k * int(out[-1])
        else:
            total += (
                spatial
                * k
                * int(layer.input.shape[-1])
                * int(out[-1])
                // getattr(layer, "groups", 1)
            )
    keras.backend.clear_session(free_memory=False)
    return total


def default_backbone(registry: Registry, source: WeightsSource, memo: Optional[Path] = None) -> str:
    """The cheapest backbone (fewest multiply-adds per image) whose pretrained weights are here: a file in
    the weights folder, or, where Keras may download them, a backbone of the built-in ``fast`` space.
    ``memo`` (a JSON file) keeps each backbone's count, so the architectures are built once."""
    from autotl.backbones.weights import resolve_weights
    from autotl.engine.space import load_space

    candidates = []
    for name, spec in sorted(registry.backbones.items()):
        try:
            resolved = resolve_weights(spec, source)
        except UsageError:
            continue
        if resolved.argument is not None and resolved.argument != "imagenet":
            candidates.append(name)
    if not candidates and source.kind != "none":
        fast = load_space("fast")[0].backbones
        candidates = [b for b in fast if b in registry.backbones]
    if not candidates:
        raise UsageError(
            f"no backbone has pretrained weights in {source.describe()}; pass --weights-dir DIR, or "
            "--backbone NAME (random weights find little)"
        )
    known = _read_memo(memo)
    for name in candidates:
        spec = registry.backbone(name)
        key = f"{name} {spec.plugin} {spec.input_size[0]}x{spec.input_size[1]}"
        if key not in known:
            known[key] = multiply_adds(spec)
        known[name] = known[key]
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps({k: v for k, v in known.items() if " " in k}, indent=1))
    return min(candidates, key=lambda name: (known[name], name))


def _read_memo(memo: Optional[Path]) -> dict[str, int]:
    try:
        return dict(json.loads(memo.read_text())) if memo is not None else {}
    except (OSError, ValueError, TypeError):
        return {}
