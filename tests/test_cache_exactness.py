"""For every built-in backbone family: the cached path equals the full model, in both phases.

Phase 1 trains the head on cached pooled features; phase 2 trains the top
blocks on activations cached at a block boundary.  Both are only valid if
they compute what the deployed model (raw pixels -> resize -> preprocessing ->
base -> head) computes.  Random weights, small images, real Keras.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotl.backbones.registry import DEFAULT_PLUGINS
from autotl.backbones.weights import ResolvedWeights
from autotl.data.dataset import from_arrays
from autotl.testing import specs_of
from autotl.training.cache import FLOAT16_TOLERANCE, FeatureCache
from autotl.training.model import (
    assemble,
    block_boundaries,
    build_base,
    build_head,
    freeze_below,
    submodel,
)

pytestmark = pytest.mark.slow  # `make test-fast` skips this module

RANDOM = ResolvedWeights(None, None, "random")
FAMILIES: dict = {}
for _spec in specs_of(*(m for m in DEFAULT_PLUGINS if m != "autotl_plugins.digits")):
    FAMILIES.setdefault(_spec.family, _spec)
SIZE = {"Xception": (96, 96), "InceptionV3": (96, 96)}


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (50, 60, 3), dtype=np.uint8) for _ in range(8)]
    return from_arrays(
        images, np.array([0, 1] * 4), ["a", "b"], "sample:exactness", val_fraction=0.5, seed=0
    )


def _head_on(x, head):
    for layer in head:
        x = layer(x, training=False)
    return np.asarray(x)


#: Entries' dtype and the tolerance the cached path holds with them, on class probabilities.
DTYPES = {"float32": 1e-4, "float16": FLOAT16_TOLERANCE}


@pytest.mark.parametrize("spec", list(FAMILIES.values()), ids=lambda s: s.family)
def test_cached_path_equals_the_full_model(spec, pictures, tmp_path: Path) -> None:
    import keras

    size = SIZE.get(spec.family, (64, 64))
    base = build_base(spec, RANDOM, input_size=size)
    caches = {dtype: FeatureCache(tmp_path / dtype, dtype=dtype) for dtype in DTYPES}
    head = build_head(2, 8, 0.0)
    raw = np.stack([pictures.val.load(i) for i in range(len(pictures.val))]).astype("float32")

    model = None
    for dtype, atol in DTYPES.items():
        pooled = caches[dtype].get(spec, lambda: base, RANDOM, pictures, None, input_size=size)
        if model is None:
            head[1].build((None, pooled.val.shape[1]))
            model = assemble(spec, base, head, input_size=size)
        cached = _head_on(np.asarray(pooled.val, np.float32), head)
        np.testing.assert_allclose(cached, model.predict(raw, verbose=0), atol=atol)

    boundaries = block_boundaries(base, spec.block_pattern)
    if not boundaries:
        pytest.skip(f"{spec.name} has no block boundaries (phase 2 is skipped for it)")
    cut = boundaries[-1]
    acts = {
        dtype: cache.get(spec, lambda: base, RANDOM, pictures, cut, input_size=size)
        for dtype, cache in caches.items()
    }
    freeze_below(base, cut)  # "fine-tune": change every weight above the boundary
    rng = np.random.default_rng(1)
    for layer in base.layers[[layer.name for layer in base.layers].index(cut) + 1 :]:
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [
                    w * (1 + 0.05 * rng.standard_normal(w.shape)).astype(w.dtype)
                    for w in layer.get_weights()
                ]
            )
    top = submodel(base, cut, None)
    full = model.predict(raw, verbose=0)
    for dtype, atol in DTYPES.items():
        x = np.asarray(acts[dtype].val, np.float32)
        cached = _head_on(keras.layers.GlobalAveragePooling2D()(top(x, training=False)), head)
        np.testing.assert_allclose(cached, full, atol=atol)


def test_augmented_views_are_cached_beside_the_originals(
    registry, tiny_dataset, tmp_path: Path
) -> None:
    from autotl.engine.space import Augmentation

    spec = registry.backbone("tiny")
    base = build_base(spec, RANDOM)
    aug = Augmentation(enabled=True, views=2)
    plain = FeatureCache(tmp_path).get(spec, lambda: base, RANDOM, tiny_dataset, None)
    views = FeatureCache(tmp_path).get(
        spec, lambda: base, RANDOM, tiny_dataset, None, augmentation=aug
    )
    n = len(tiny_dataset.train)
    assert (
        views.key != plain.key
        and views.train.shape[0] == 3 * n
        and views.val.shape[0] == len(tiny_dataset.val)
    )
    np.testing.assert_allclose(
        views.train.rows(0, n), np.asarray(plain.train), atol=1e-5
    )  # view 0: the originals
    assert not np.allclose(views.train.rows(n, 2 * n), np.asarray(plain.train))  # the others differ
    np.testing.assert_array_equal(views.train_labels, np.tile(tiny_dataset.train.labels, 3))
