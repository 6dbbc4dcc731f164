from __future__ import annotations

import numpy as np
import pytest

from autotl.backbones.weights import ResolvedWeights
from autotl.training.model import assemble, block_boundaries, build_base, build_head, freeze_below

RANDOM = ResolvedWeights(None, None, "random")


@pytest.fixture
def tiny(registry):
    spec = registry.backbone("tiny")
    return spec, build_base(spec, RANDOM)


def test_base_is_frozen_and_boundaries_are_single_tensor_cuts(tiny) -> None:
    spec, base = tiny
    assert not base.trainable
    assert block_boundaries(base, spec.block_pattern) == [
        "block1_out",
        "block2_out",
    ]  # block3_out is the output
    assert (
        block_boundaries(base, r"^block\d_bn$") == []
    )  # inside residual blocks: a skip edge crosses each
    assert block_boundaries(base, r"_bn$") == ["stem_bn"]


def test_freeze_below_unfreezes_exactly_the_top_and_keeps_batchnorm_frozen(tiny) -> None:
    import keras

    _, base = tiny
    n = freeze_below(base, "block2_out")
    names = [layer.name for layer in base.layers]
    above = names[names.index("block2_out") + 1 :]
    trainable = {layer.name for layer in base.layers if layer.trainable}
    assert trainable == {
        name
        for name in above
        if not isinstance(base.get_layer(name), keras.layers.BatchNormalization)
    }
    assert "block3_bn" not in trainable and "block3_conv" in trainable
    assert n == 1  # block3_conv is the only weighted, non-BN layer above
    trainable_vars = {v.path for v in base.trainable_weights}
    assert trainable_vars and all(path.startswith("block3_conv") for path in trainable_vars)


def test_full_model_takes_any_size_and_loads_in_safe_mode(tiny, tmp_path) -> None:
    import keras

    spec, base = tiny
    model = assemble(spec, base, build_head(3, 8, 0.1))
    a = model.predict(
        np.random.default_rng(0).integers(0, 255, (2, 50, 70, 3)).astype("uint8"), verbose=0
    )
    b = model.predict(np.full((1, 17, 23, 3), 128.0, "float32"), verbose=0)
    assert a.shape == (2, 3) and b.shape == (1, 3)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert not any(type(layer).__name__ == "Lambda" for layer in loaded.layers)


def test_base_is_called_in_inference_mode(tiny) -> None:
    """Dropout in the head may train, but the base's BatchNorm never uses batch statistics."""
    spec, base = tiny
    freeze_below(base, None)
    model = assemble(spec, base, build_head(3, 8, 0.0))
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        model(x, training=True).numpy(), model(x, training=False).numpy(), atol=1e-6
    )
