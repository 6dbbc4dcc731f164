"""DenseNet121 (Huang et al. 2017)."""

from __future__ import annotations

from autotl import BackboneSpec, Preprocessing, hookimpl


def _build(input_shape: tuple[int, int, int], weights: str | None):
    import keras

    return keras.applications.DenseNet121(
        input_shape=input_shape, include_top=False, weights=weights
    )


def _preprocess_input(x):
    import keras

    return keras.applications.densenet.preprocess_input(x)


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="densenet121",
            family="DenseNet",
            build=_build,
            input_size=(224, 224),
            preprocessing=Preprocessing.torch(),
            preprocess_input=_preprocess_input,
            # Each dense layer ends in a concat, each transition in a pool: a block is one dense layer.
            # The last concat, conv5_block16_concat, has only BatchNormalization above it: left out.
            block_pattern=r"^(conv[2-4]_block\d+_concat|conv5_block([1-9]|1[0-5])_concat|pool\d_pool)$",
            weights_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            description="DenseNet121: few parameters for its accuracy, slower on CPU; torch preprocessing",
        )
    ]
