"""MobileNetV3 (Howard et al. 2019), Small and Large: every variant Keras ships ImageNet weights for.

Keras builds MobileNetV3 with its preprocessing inside (a ``Rescaling`` to
[-1, 1], ``include_preprocessing=True``), so the default variants take raw
0..255 pixels.  The ``-nopre`` variants leave that layer out and let autotl
bake the same map in front instead; the weights are the same file.
"""

from __future__ import annotations

from functools import partial

from autotl import BackboneSpec, Preprocessing, hookimpl

#: (model type, alpha, minimalistic) for each set of ImageNet weights Keras ships.
VARIANTS = (
    ("small", 0.75, False),
    ("small", 1.0, False),
    ("small", 1.0, True),
    ("large", 0.75, False),
    ("large", 1.0, False),
    ("large", 1.0, True),
)


def _build(
    model_type: str,
    alpha: float,
    minimalistic: bool,
    include_preprocessing: bool,
    input_shape: tuple[int, int, int],
    weights: str | None,
):
    import keras

    builder = (
        keras.applications.MobileNetV3Small
        if model_type == "small"
        else keras.applications.MobileNetV3Large
    )
    return builder(
        input_shape=input_shape,
        alpha=alpha,
        minimalistic=minimalistic,
        include_top=False,
        weights=weights,
        include_preprocessing=include_preprocessing,
    )


def _preprocess_input(x):
    import keras

    return keras.applications.mobilenet_v3.preprocess_input(x)


def _preprocess_input_nopre(x):
    # keras.applications.mobilenet_v3.preprocess_input is a pass-through: the
    # model's own Rescaling(1/127.5, -1) does the work, and it is left out here.
    import keras

    return keras.applications.imagenet_utils.preprocess_input(x, mode="tf")


def _spec(
    model_type: str, alpha: float, minimalistic: bool, include_preprocessing: bool
) -> BackboneSpec:
    kind = "minimalistic_" if minimalistic else ""
    suffix = ("-minimalistic" if minimalistic else "") + ("" if include_preprocessing else "-nopre")
    inside = (
        "preprocessing inside the model"
        if include_preprocessing
        else "preprocessing baked in by autotl"
    )
    return BackboneSpec(
        name=f"mobilenet_v3_{model_type}-{alpha}{suffix}",
        family="MobileNetV3",
        build=partial(_build, model_type, alpha, minimalistic, include_preprocessing),
        input_size=(224, 224),
        preprocessing=Preprocessing.none() if include_preprocessing else Preprocessing.tf(),
        preprocess_input=_preprocess_input if include_preprocessing else _preprocess_input_nopre,
        block_pattern=r"^expanded_conv(_\d+)?_(add|project_bn)$",
        weights_file=f"weights_mobilenet_v3_{model_type}_{kind}224_{alpha}_float_no_top_v2.h5",
        description=(
            f"MobileNetV3{model_type.capitalize()}, alpha {alpha}{', minimalistic (no squeeze-excite, ReLU)' if minimalistic else ''}: "
            f"fast on CPU; {inside}"
        ),
    )


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    return [
        _spec(*variant, include_preprocessing)
        for variant in VARIANTS
        for include_preprocessing in (True, False)
    ]
