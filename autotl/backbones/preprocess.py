"""A backbone's preprocessing as built-in Keras layers.

Built-in layers only (``Rescaling``, or a fixed 1x1 ``Conv2D`` when channels
are reordered or scaled per channel), never a ``Lambda``: the saved model then
loads with ``safe_mode=True`` in a process that has Keras but not autotl.
"""

from __future__ import annotations

from typing import Any

from autotl.spec import Preprocessing

__all__ = ["preprocessing_layer", "apply_preprocessing"]


def preprocessing_layer(p: Preprocessing, name: str = "preprocess") -> Any | None:
    """The layer that applies ``p`` to 0..255 RGB pixels, or ``None`` for the identity."""
    import keras
    import numpy as np

    if p.is_identity:
        return None
    if p.channel_order == "RGB" and len(set(p.scale)) == 1 and len(set(p.offset)) == 1:
        return keras.layers.Rescaling(p.scale[0], p.offset[0], name=name)
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for out_channel, in_channel in enumerate(p.source):
        kernel[0, 0, in_channel, out_channel] = p.scale[out_channel]
    layer = keras.layers.Conv2D(3, 1, name=name, trainable=False)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel, np.asarray(p.offset, dtype="float32")])
    return layer


def apply_preprocessing(p: Preprocessing, x: Any) -> Any:
    """``x`` through :func:`preprocessing_layer` (unchanged for the identity)."""
    layer = preprocessing_layer(p)
    return x if layer is None else layer(x)
