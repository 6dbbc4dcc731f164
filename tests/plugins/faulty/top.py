"""A build that keeps a classification top: its output is (batch, classes), not a feature map."""

from __future__ import annotations

from functools import partial

from autotl import hookimpl
from faulty._base import build_small, small_spec


def _top(keras, x):
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(10, activation="softmax", name="predictions")(x)


@hookimpl
def autotl_backbones():
    return [small_spec("faulty_top", build=partial(build_small, top=_top))]
