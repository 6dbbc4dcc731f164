"""A backbone that passes every check but fails in every trial.

Its last layer converts its input to NumPy: that works when the base is called
eagerly (as the checks call it), and fails when TensorFlow traces it into a
graph, as the feature cache does.  A real Keras pitfall; here it stands for any
backbone that breaks only inside a trial.
"""

from __future__ import annotations

from functools import partial

from autotl import hookimpl
from faulty._base import build_small, small_spec


def _top(keras, x):
    import numpy as np

    class EagerOnly(keras.layers.Layer):
        def call(self, inputs):
            return inputs * float(np.asarray(inputs).max() > -np.inf)

        def compute_output_shape(self, shape):
            return shape

    return EagerOnly(name="eager_only")(x)


@hookimpl
def autotl_backbones():
    return [
        small_spec("faulty_traced", build=partial(build_small, top=_top)),
        small_spec("faulty_traced_b", build=partial(build_small, top=_top)),
    ]
