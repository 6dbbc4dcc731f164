"""The embedded default data set: scikit-learn's bundled handwritten digits.

1,797 real scanned 8x8 images in 10 classes, shipped inside scikit-learn, so
``autotl search --sample digits`` needs no data of the user's and downloads
nothing.  The model resizes them to its backbone's input size itself.
"""

from __future__ import annotations

from autotl import SampleSpec, hookimpl


def load_digits():
    """Images as uint8 RGB (grey 0..16 scaled to 0..255, ink dark on white, like a scan)."""
    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    grey = (255 - np.round(bunch.images * (255 / 16))).astype("uint8")
    images = [np.repeat(g[:, :, None], 3, axis=2) for g in grey]
    return images, bunch.target.astype("int64"), [str(d) for d in bunch.target_names]


@hookimpl
def autotl_samples() -> list[SampleSpec]:
    return [
        SampleSpec(
            "digits",
            load_digits,
            "scikit-learn digits: 1,797 scanned 8x8 images, 10 classes, bundled, offline",
        )
    ]
