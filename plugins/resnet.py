"""ResNet50 (He et al. 2015) and ResNet50V2 (He et al. 2016, pre-activation)."""

from __future__ import annotations

from autotl import BackboneSpec, Preprocessing, hookimpl


def _build(input_shape: tuple[int, int, int], weights: str | None):
    import keras

    return keras.applications.ResNet50(input_shape=input_shape, include_top=False, weights=weights)


def _build_v2(input_shape: tuple[int, int, int], weights: str | None):
    import keras

    return keras.applications.ResNet50V2(
        input_shape=input_shape, include_top=False, weights=weights
    )


def _preprocess_input(x):
    import keras

    return keras.applications.resnet50.preprocess_input(x)


def _preprocess_input_v2(x):
    import keras

    return keras.applications.resnet_v2.preprocess_input(x)


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="resnet50",
            family="ResNet",
            build=_build,
            input_size=(224, 224),
            preprocessing=Preprocessing.caffe(),
            preprocess_input=_preprocess_input,
            block_pattern=r"^conv\d_block\d+_out$",
            weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            description="ResNet50: the classic baseline; caffe preprocessing (BGR, ImageNet mean subtracted)",
        ),
        BackboneSpec(
            name="resnet50_v2",
            family="ResNetV2",
            build=_build_v2,
            input_size=(224, 224),
            preprocessing=Preprocessing.tf(),
            preprocess_input=_preprocess_input_v2,
            # conv5_block3_out is followed by BatchNormalization only: nothing above it to fine-tune.
            block_pattern=r"^(conv[2-4]_block\d+|conv5_block[12])_out$",
            weights_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            description="ResNet50V2: pre-activation ResNet50, often better for transfer; tf preprocessing",
        ),
    ]
