from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRIAL, tiny_trial

from autotl.backbones.weights import ResolvedWeights
from autotl.training.cache import FeatureCache
from autotl.training.model import build_base, submodel
from autotl.training.npyfile import NpyRows
from autotl.training.trainer import Gate, TrialParams, train_trial

RANDOM = ResolvedWeights(None, None, "random")


def run(registry, dataset, tmp_path: Path, reports=None, **overrides):
    return tiny_trial(registry, dataset, tmp_path, reports, **overrides)


def test_learning_rate_rule_is_enforced_in_code() -> None:
    with pytest.raises(ValueError, match="at least 10 times below"):
        TrialParams(backbone="x", phase1_lr=1e-3, finetune_lr=5e-4)


def test_phase2_starts_only_after_the_head_stabilised(
    registry, tiny_dataset, tmp_path: Path
) -> None:
    reports: list = []
    _, _, _, result = run(registry, tiny_dataset, tmp_path, reports)
    h1, h2 = result.history["phase1"], result.history["phase2"]
    assert result.gate is Gate.PASSED and h2, result.gate_reason
    stable = result.head_stable_epoch
    # the head's validation loss stopped improving: its best epoch is followed by `patience` worse ones
    assert len(h1["val_loss"]) - 1 - stable >= 3
    assert all(v >= h1["val_loss"][stable] - 1e-3 for v in h1["val_loss"][stable + 1 :])
    # one step axis: phase 1 steps, then phase 2 steps offset by phase1_epochs
    steps = [s for s, _ in reports]
    assert steps[: len(h1["loss"])] == list(range(len(h1["loss"])))
    assert steps[len(h1["loss"]) :] == [80 + i for i in range(len(h2["loss"]))]
    assert result.cut == "block2_out" and result.unfrozen_layers == 1
    assert result.val_accuracy > 0.8


def test_gate_closed_when_head_loss_above_threshold(registry, tiny_dataset, tmp_path: Path) -> None:
    _, _, _, result = run(registry, tiny_dataset, tmp_path, head_loss_threshold=1e-6)
    assert result.gate is Gate.HEAD_LOSS_HIGH and result.gate_reason.startswith(
        "head training loss"
    )
    assert result.history["phase2"] == {}
    assert result.cut is None and result.unfrozen_layers == 0


def test_gate_closed_when_head_still_improving(registry, tiny_dataset, tmp_path: Path) -> None:
    _, _, _, result = run(registry, tiny_dataset, tmp_path, phase1_epochs=2, phase1_patience=5)
    assert result.gate is Gate.STILL_IMPROVING and result.gate_reason.startswith(
        "head still improving"
    )
    assert result.head_stable_epoch is None
    assert result.history["phase2"] == {}


def test_cached_path_equals_full_model_in_both_phases(
    registry, tiny_dataset, tmp_path: Path
) -> None:
    import keras

    spec, base, cache, result = run(registry, tiny_dataset, tmp_path)
    images = np.concatenate(list(tiny_dataset.val.batches(spec.input_size)))
    model = result.build_model()
    full = model.predict(images, verbose=0)
    # phase 1 view: pooled features from the cache through the head
    head = [model.get_layer(n) for n in ("head_dropout", "head_dense", "predictions")]
    pooled = cache.get(spec, lambda: base, RANDOM, tiny_dataset, None).val
    # the pooled cache was made before fine-tuning changed the top: recompute the top from the boundary
    acts = cache.get(spec, lambda: base, RANDOM, tiny_dataset, result.cut).val
    top = submodel(base, result.cut, None)
    x = keras.layers.GlobalAveragePooling2D()(top(np.asarray(acts), training=False))
    for layer in head:
        x = layer(x, training=False)
    np.testing.assert_allclose(np.asarray(x), full, atol=1e-4)
    assert pooled.shape == (len(tiny_dataset.val), 16)


def test_cache_is_reused_and_keyed(registry, tiny_dataset, tmp_path: Path) -> None:
    spec = registry.backbone("tiny")
    base = build_base(spec, RANDOM)
    cache = FeatureCache(tmp_path)
    calls: list[int] = []

    def make_base():
        calls.append(1)
        return base

    first = cache.get(
        spec, make_base, RANDOM, tiny_dataset, None, prefetch=lambda b: ["block2_out"]
    )
    again = cache.get(spec, make_base, RANDOM, tiny_dataset, None)
    prefetched = cache.get(spec, make_base, RANDOM, tiny_dataset, "block2_out")
    other = cache.get(spec, make_base, RANDOM, tiny_dataset, "block1_out")
    assert first.built and not again.built and not prefetched.built and other.built
    assert len(calls) == 2  # the base is built only when something must be computed
    assert prefetched.train.shape[1:] == (16, 16, 16)  # 32 px, one stride-2 stem
    assert first.key == again.key != other.key
    assert isinstance(again.train, NpyRows) and again.train.dtype == np.float16  # read by rows
    np.testing.assert_array_equal(np.asarray(first.train), np.asarray(again.train))
    assert not list(tmp_path.glob("*.tmp*"))


def test_unfreeze_all_trains_the_whole_base_from_pixels_when_the_space_asks(
    registry, tiny_dataset, tmp_path: Path
) -> None:
    import keras

    _spec, base, _, result = run(registry, tiny_dataset, tmp_path, unfreeze_all=True)
    assert result.gate is Gate.PASSED and result.cut is None and result.history["phase2"]
    assert result.unfrozen_layers == sum(
        1
        for layer in base.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    )
    if result.phase2_kept:
        assert "stem_conv" in result.trained_weights()


@pytest.mark.slow
def test_a_boundary_not_cached_is_streamed_from_pixels_and_trains_as_the_cached_one(
    registry, tiny_dataset, tmp_path: Path
) -> None:
    """No room for the boundary's activations: phase 2 computes them from the images, batch by batch,
    through the frozen bottom; the same trial on cached activations learns the same (to float16's precision)."""
    import keras

    spec = registry.backbone("tiny")
    overrides = {**TINY_TRIAL, "phase2_epochs": 3, "phase2_patience": 3}
    results = {}
    for name in ("cached", "streamed"):
        keras.utils.set_random_seed(0)
        base = build_base(spec, RANDOM)
        pooled = FeatureCache(tmp_path / "probe").entry_bytes(base, None, 48)
        budget = None if name == "cached" else pooled + 1000
        cache = FeatureCache(tmp_path / name, budget=budget)
        params = TrialParams(**overrides)
        results[name] = train_trial(spec, params, lambda b=base: b, tiny_dataset, cache, RANDOM)
    cached, streamed = results["cached"], results["streamed"]
    assert streamed.cache["phase2"] == {"streamed": True, "cut": "block2_out"}
    assert (
        cached.cache["phase2"]["cut"] == "block2_out" and "streamed" not in cached.cache["phase2"]
    )
    h1, h2 = cached.history["phase2"], streamed.history["phase2"]
    assert len(h1["loss"]) == len(h2["loss"]) == 3
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(h1["val_loss"], h2["val_loss"], rtol=1e-2, atol=1e-3)
