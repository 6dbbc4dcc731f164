"""Xception (Chollet 2017) and InceptionV3 (Szegedy et al. 2016), both at 299x299.

Keras leaves Xception's residual ``add`` layers unnamed, so they are called
``add``, ``add_1``, ... by a process-wide counter and change with every model
built before.  Block boundaries name the frozen-feature cache entries, so the
plugin renames them ``block2_add`` ... ``block13_add`` after the block they end.
"""

from __future__ import annotations

import re

from autotl import BackboneSpec, Preprocessing, hookimpl


def _name_residual_adds(base) -> None:
    """Rename each unnamed ``add`` after the Xception block whose output it is."""
    import keras

    for layer in base.layers:
        if isinstance(layer, keras.layers.Add) and re.fullmatch(r"add(_\d+)?", layer.name):
            producers = [t._keras_history.operation.name for t in layer._inbound_nodes[0].input_tensors]
            blocks = [m.group(1) for name in producers if (m := re.match(r"(block\d+)_", name))]
            if blocks:
                layer.name = f"{blocks[0]}_add"


def _build_xception(input_shape: tuple[int, int, int], weights: str | None):
    import keras

    base = keras.applications.Xception(input_shape=input_shape, include_top=False, weights=weights)
    _name_residual_adds(base)
    return base


def _build_inception_v3(input_shape: tuple[int, int, int], weights: str | None):
    import keras

    return keras.applications.InceptionV3(input_shape=input_shape, include_top=False, weights=weights)


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
