"""MobileNet v1 (Howard et al. 2017): every width multiplier Keras ships ImageNet weights for."""

from __future__ import annotations

from functools import partial

from autotl import BackboneSpec, Preprocessing, hookimpl

ALPHAS = (0.25, 0.5, 0.75, 1.0)
SIZES = ((128, 128), (160, 160), (192, 192), (224, 224))
#: How Keras spells each alpha in its weight file names.
ALPHA_TEXT = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}
#: SHA-256 of the Keras release files we have seen; Keras itself publishes none for MobileNet.
SHA256 = {0.25: "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"}


def _build(alpha: float, input_shape: tuple[int, int, int], weights: str | None):
    import keras

    return keras.applications.MobileNet(
        input_shape=input_shape, alpha=alpha, include_top=False, weights=weights
    )


def _preprocess_input(x):
    import keras

    return keras.applications.mobilenet.preprocess_input(x)


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name=f"mobilenet-{alpha}",
            family="MobileNet",
            build=partial(_build, alpha),
            input_size=(224, 224),
            input_sizes=SIZES,
            preprocessing=Preprocessing.tf(),
            preprocess_input=_preprocess_input,
            block_pattern=r"^conv_pw_\d+_relu$",
            weights_file=f"mobilenet_{ALPHA_TEXT[alpha]}_224_tf_no_top.h5",
            weights_sha256=SHA256.get(alpha),
            description=f"MobileNet v1, alpha {alpha}: plain depthwise-separable stack, the fastest on slow CPUs",
        )
        for alpha in ALPHAS
    ]
