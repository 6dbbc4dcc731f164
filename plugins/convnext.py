"""ConvNeXt-Tiny (Liu et al. 2022).

Keras builds the preprocessing into the model (``include_preprocessing=True``),
so it takes raw 0..255 pixels.  Its residual additions are plain ``+`` ops,
not layers, so no layer ends a block; the stem and the three downsampling
layers between stages are the block boundaries (a block is a whole stage).
Keras leaves the final ``LayerNormalization`` unnamed (``layer_normalization_7``,
by a process-wide counter); autotl stores trained layers by name, so the
plugin names it ``convnext_tiny_layernorm``.
"""

from __future__ import annotations

from autotl import BackboneSpec, Preprocessing, hookimpl

#: SHA-256 of ``convnext_tiny_notop.h5``, as Keras publishes it (``WEIGHTS_HASHES``).
SHA256_TINY = "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"


def _build(input_shape: tuple[int, int, int], weights: str | None):
    import keras

    base = keras.applications.ConvNeXtTiny(
        input_shape=input_shape, include_top=False, weights=weights
    )
    norm = base.layers[-1]
    if isinstance(norm, keras.layers.LayerNormalization) and norm.name.startswith(
        "layer_normalization"
    ):
        norm.name = f"{base.name}_layernorm"
    return base


def _preprocess_input(x):
    import keras

    return keras.applications.convnext.preprocess_input(x)


@hookimpl
def autotl_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="convnext_tiny",
            family="ConvNeXt",
            build=_build,
            input_size=(224, 224),
            preprocessing=Preprocessing.none(),
            preprocess_input=_preprocess_input,
            block_pattern=r"^convnext_tiny_(stem|downsampling_block_\d+)$",
            weights_file="convnext_tiny_notop.h5",
            weights_sha256=SHA256_TINY,
            description="ConvNeXt-Tiny: a modern, accurate CNN, heavy on CPU; preprocessing inside the model",
        )
    ]
