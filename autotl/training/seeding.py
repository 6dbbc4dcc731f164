"""One seed for Python, NumPy, Keras and TensorFlow, cheap to set before every trial."""

from __future__ import annotations

import random

__all__ = ["set_random_seed"]

_tf_seed: int | None = None


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed``, but TensorFlow's global seed is set only when it changes.

    ``tf.random.set_seed`` also clears TensorFlow's kernel cache, which made
    the first epoch of every trial about 0.1 s slower.  Setting the same value
    again would only reset the op-seed counter of ops drawn without a seed,
    and autotl draws none: its random ops take explicit seeds (stateless ops,
    Keras seed generators), and Keras initialisers and seed generators take
    theirs from Python's ``random``, which is reseeded every time.
    """
    global _tf_seed
    if seed != _tf_seed:
        import keras

        keras.utils.set_random_seed(seed)
        _tf_seed = seed
        return
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
