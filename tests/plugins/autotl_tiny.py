"""A tiny backbone for fast tests, written as a third-party plugin would be.

Three residual blocks with BatchNormalization at 32x32: enough structure for
block boundaries, unfreezing and BatchNorm rules, and it trains in seconds.
"""

from __future__ import annotations

from autotl import BackboneSpec, Preprocessing, hookimpl


def build_tiny(input_shape, weights, blind=False):
    """``blind``: the pixels are multiplied by zero first, so every image gives the same features."""
    import keras
    from keras import layers

    inp = keras.Input(input_shape)
    x = layers.Rescaling(0.0, name="blind")(inp) if blind else inp
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for i, ch in enumerate((8, 16, 16), start=1):
        y = layers.Conv2D(ch, 3, padding="same", name=f"block{i}_conv")(x)
        y = layers.BatchNormalization(name=f"block{i}_bn")(y)
        if x.shape[-1] != ch:
            x = layers.Conv2D(ch, 1, name=f"block{i}_proj")(x)
        x = layers.Add(name=f"block{i}_add")([x, y])
        x = layers.ReLU(name=f"block{i}_out")(x)
    model = keras.Model(inp, x, name="tiny")
    if weights is not None:  # a file path: there is nothing to download (downloadable=False)
        model.load_weights(weights)
    return model


@hookimpl
def autotl_backbones():
    return [
        BackboneSpec(
            name="tiny",
            build=build_tiny,
            input_size=(32, 32),
            preprocessing=Preprocessing.tf(),
            block_pattern=r"^block\d_out$",
            weights_file="tiny.weights.h5",
            downloadable=False,
            description="a tiny residual CNN for tests",
        )
    ]
