"""Xception (Chollet 2017) and InceptionV3 (Szegedy et al. 2016), both at 299x299.

Keras leaves many of their layers unnamed (Xception's residual ``add`` and
shortcut convolutions, nearly every InceptionV3 convolution), so they are
called ``conv2d_93`` by a process-wide counter and change with every model
built before.  autotl names cached features by block boundary and stores
trained layers by name, so the plugin renames them after building: Xception's
residual adds ``block2_add`` ... ``block13_add`` after the block they end, and
every other counter-named layer by its rank in the model (``conv2d``, ``conv2d_1``, ...).
"""

from __future__ import annotations

import re

from autotl import BackboneSpec, Preprocessing, hookimpl


def _name_residual_adds(base) -> None:
    """Rename each unnamed ``add`` after the Xception block whose output it is."""
    import keras

    for layer in base.layers:
        if isinstance(layer, keras.layers.Add) and re.fullmatch(r"add(_\d+)?", layer.name):
            producers = [
                t._keras_history.operation.name for t in layer._inbound_nodes[0].input_tensors
            ]
            blocks = [m.group(1) for name in producers if (m := re.match(r"(block\d+)_", name))]
            if blocks:
                layer.name = f"{blocks[0]}_add"


def _snake_case(name: str) -> str:
    """Keras' default layer name for a class (``BatchNormalization`` -> ``batch_normalization``)."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _name_counted_layers(base) -> None:
    """Rename the layers Keras numbered by its counter, numbering them from 0 within this model."""
    seen: dict[str, int] = {}
    for layer in base.layers:
        prefix = _snake_case(type(layer).__name__)
        if re.fullmatch(rf"{prefix}(_\d+)?", layer.name):
            k = seen[prefix] = seen.get(prefix, -1) + 1
            layer.name = f"{prefix}_{k}" if k else prefix


def _build_xception(input_shape: tuple[int, int, int], weights: str | None):
    import keras

    base = keras.applications.Xception(input_shape=input_shape, include_top=False, weights=weights)
    _name_residual_adds(base)
    _name_counted_layers(base)
    return base


def _build_inception_v3(input_shape: tuple[int, int, int], weights: str | None):
    import keras

    base = keras.applications.InceptionV3(
        input_shape=input_shape, include_top=False, weights=weights
    )
    _name_counted_layers(base)
    return base


def _preprocess_input_xception(x):
    import keras

    return keras.applications.xception.preprocess_input(x)


def _preprocess_input_inception_v3(x):
    import keras

    return keras.applications.inception_v3.preprocess_input(x)


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="xception",
            family="Xception",
            build=_build_xception,
            input_size=(299, 299),
            preprocessing=Preprocessing.tf(),
            preprocess_input=_preprocess_input_xception,
            block_pattern=r"^block\d+_add$",
            weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            description="Xception: depthwise-separable Inception, accurate but heavy on CPU; 299x299",
        ),
        BackboneSpec(
            name="inception_v3",
            family="InceptionV3",
            build=_build_inception_v3,
            input_size=(299, 299),
            preprocessing=Preprocessing.tf(),
            preprocess_input=_preprocess_input_inception_v3,
            block_pattern=r"^mixed\d+$",
            weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            description="InceptionV3: a strong mid-size baseline; 299x299",
        ),
    ]
