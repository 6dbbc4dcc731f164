"""What the faulty plugins share: a tiny working backbone they each break in one way."""

from __future__ import annotations

from dataclasses import replace

from autotl import BackboneSpec, Preprocessing


def build_small(input_shape, weights, top=None):
    """Two residual blocks at 32 px; ``top(keras, x)`` may add layers above them."""
    import keras
    from keras import layers

    inp = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(inp)
    for i in (1, 2):
        y = layers.Conv2D(8, 3, padding="same", name=f"block{i}_conv")(x)
        x = layers.ReLU(name=f"block{i}_out")(layers.Add(name=f"block{i}_add")([x, y]))
    x = layers.Conv2D(8, 1, name="top_conv")(x)
    if top is not None:
        x = top(keras, x)
    model = keras.Model(inp, x, name="small")
    if weights is not None:
        model.load_weights(weights)
    return model


def small_spec(name: str, **changes) -> BackboneSpec:
    """A spec that passes every check, with ``changes`` applied."""
    spec = BackboneSpec(
        name=name,
        build=build_small,
        input_size=(32, 32),
        preprocessing=Preprocessing.tf(),
        preprocess_input=lambda x: x / 127.5 - 1.0,
        block_pattern=r"^block\d_out$",
        weights_file=f"{name}.weights.h5",
        downloadable=False,
        description="a faulty plugin's backbone",
    )
    return replace(spec, **changes)
