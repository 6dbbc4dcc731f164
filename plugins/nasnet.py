"""NASNetMobile (Zoph et al. 2018).

Every NASNet cell reads the outputs of the two cells before it, so no cell
output is a single-tensor cut of the graph: the backbone has no block
boundaries, and autotl trains only the head on it (phase 2 is skipped).
"""

from __future__ import annotations

from autotl import BackboneSpec, Preprocessing, hookimpl


def _build(input_shape: tuple[int, int, int], weights: str | None):
    import keras

    return keras.applications.NASNetMobile(
        input_shape=input_shape, include_top=False, weights=weights
    )


def _preprocess_input(x):
    import keras

    return keras.applications.nasnet.preprocess_input(x)


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="nasnet_mobile",
            family="NASNet",
            build=_build,
            input_size=(224, 224),
            preprocessing=Preprocessing.tf(),
            preprocess_input=_preprocess_input,
            # The cell outputs; none is a cut (each cell also feeds the cell after next).
            # normal_concat_12, the last cell, is a cut but has no weights above it: left out.
            block_pattern=r"^(normal_concat_([0-9]|1[01])|reduction_concat_\w+)$",
            weights_file="NASNet-mobile-no-top.h5",
            description="NASNetMobile: found by architecture search; no block boundaries, so head training only",
        )
    ]
