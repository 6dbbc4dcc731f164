"""MobileNetV2 (Sandler et al. 2018): every width multiplier Keras ships ImageNet weights for."""

from __future__ import annotations

from functools import partial

from autotl import BackboneSpec, Preprocessing, hookimpl

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
SIZES = ((96, 96), (128, 128), (160, 160), (192, 192), (224, 224))


def _build(alpha: float, input_shape: tuple[int, int, int], weights: str | None):
    import keras

    return keras.applications.MobileNetV2(
        input_shape=input_shape, alpha=alpha, include_top=False, weights=weights
    )


def _preprocess_input(x):
    import keras

    return keras.applications.mobilenet_v2.preprocess_input(x)


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name=f"mobilenet_v2-{alpha}",
            family="MobileNetV2",
            build=partial(_build, alpha),
            input_size=(224, 224),
            input_sizes=SIZES if alpha <= 1.0 else ((224, 224),),
            preprocessing=Preprocessing.tf(),
            preprocess_input=_preprocess_input,
            block_pattern=r"^block_\d+_(add|project_BN)$",
            weights_file=f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5",
            description=f"MobileNetV2, alpha {alpha}: small and fast, a good first choice on CPU",
        )
        for alpha in ALPHAS
    ]
