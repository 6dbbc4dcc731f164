"""EfficientNet B0-B3 (Tan & Le 2019) and EfficientNetV2 B0-B3 (Tan & Le 2021).

Both take raw 0..255 pixels: Keras builds their preprocessing into the model,
so ``keras.applications.efficientnet.preprocess_input`` is a pass-through.

EfficientNet (v1) has a Keras quirk this plugin corrects: only when
``weights="imagenet"`` does Keras add the extra ``Rescaling(1/sqrt(std))``
after its ``Normalization`` layer (tensorflow/tensorflow#49930), so the same
official file loaded from a path (``--weights-dir``) would silently see
wrongly scaled inputs.  For a path, the plugin loads the file into the plain
graph and folds that scale into the ``Normalization`` variance, which gives the
same function as Keras' own ImageNet model.

Keras also leaves that ``Normalization`` layer unnamed (``normalization_3``, by a
process-wide counter); autotl stores trained layers by name, so the plugin
names it ``stem_normalization``.
"""

from __future__ import annotations

from functools import partial

from autotl import BackboneSpec, Preprocessing, hookimpl

#: Variant to default input size; Keras ships ImageNet weights at that size only.
SIZES = {"b0": 224, "b1": 240, "b2": 260, "b3": 300}
#: Keras' EfficientNet (v1) ImageNet standard deviations, applied after its Normalization layer.
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def _fold_imagenet_scale(base) -> None:
    """Make ``base``'s Normalization also divide by sqrt(std), as Keras' ImageNet graph does."""
    import keras
    import numpy as np

    layers = list(base.layers)
    index = next(
        i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Normalization)
    )
    if isinstance(layers[index + 1], keras.layers.Rescaling):  # a Keras that adds it for paths too
        return
    norm = layers[index]
    norm.adapt_variance.assign(
        np.asarray(norm.adapt_variance) * np.asarray(IMAGENET_STDDEV_RGB, "float32")
    )
    norm.finalize_state()


def _name_normalization(base) -> None:
    import keras

    for layer in base.layers:
        if isinstance(layer, keras.layers.Normalization) and layer.name.startswith("normalization"):
            layer.name = "stem_normalization"


def _build(variant: str, input_shape: tuple[int, int, int], weights: str | None):
    import keras

    builder = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    if weights is None or weights == "imagenet":
        base = builder(input_shape=input_shape, include_top=False, weights=weights)
    else:
        base = builder(input_shape=input_shape, include_top=False, weights=None)
        base.load_weights(weights)
        _fold_imagenet_scale(base)
    _name_normalization(base)
    return base


def _build_v2(variant: str, input_shape: tuple[int, int, int], weights: str | None):
    import keras

    builder = getattr(keras.applications, f"EfficientNetV2{variant.upper()}")
    return builder(input_shape=input_shape, include_top=False, weights=weights)


def _preprocess_input(x):
    import keras

    return keras.applications.efficientnet.preprocess_input(x)


def _preprocess_input_v2(x):
    import keras

    return keras.applications.efficientnet_v2.preprocess_input(x)


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    v1 = [
        BackboneSpec(
            name=f"efficientnet_{variant}",
            family="EfficientNet",
            build=partial(_build, variant),
            input_size=(size, size),
            preprocessing=Preprocessing.none(),
            preprocess_input=_preprocess_input,
            block_pattern=r"^block\d+[a-z]_(add|project_bn)$",
            weights_file=f"efficientnet{variant}_notop.h5",
            description=f"EfficientNet{variant.upper()}: accurate for its size; preprocessing inside the model",
        )
        for variant, size in SIZES.items()
    ]
    v2 = [
        BackboneSpec(
            name=f"efficientnet_v2_{variant}",
            family="EfficientNetV2",
            build=partial(_build_v2, variant),
            input_size=(size, size),
            preprocessing=Preprocessing.none(),
            preprocess_input=_preprocess_input_v2,
            # Block 1 is fused with expand ratio 1, so it ends in an activation after its project_bn.
            block_pattern=r"^block1[a-z]_(add|project_activation)$|^block[2-9][a-z]_(add|project_bn)$",
            weights_file=f"efficientnetv2-{variant}_notop.h5",
            description=f"EfficientNetV2{variant.upper()}: faster to train than v1; preprocessing inside the model",
        )
        for variant, size in SIZES.items()
    ]
    return v1 + v2
