"""A second tiny backbone whose features say nothing about the image: backbone screening must drop it.

The network of ``autotl_tiny`` with its pixels multiplied by zero, so every image
gives the same features; it loads, builds and passes every check, as a
third-party plugin with worthless weights would.
"""

from __future__ import annotations

from autotl_tiny import build_tiny

from autotl import BackboneSpec, Preprocessing, hookimpl


def build_blind(input_shape, weights):
    return build_tiny(input_shape, weights, blind=True)


@hookimpl
def autotl_backbones():
    return [
        BackboneSpec(
            name="tiny_blind",
            build=build_blind,
            input_size=(32, 32),
            preprocessing=Preprocessing.tf(),
            block_pattern=r"^block\d_out$",
            weights_file="tiny_blind.weights.h5",
            downloadable=False,
            description="a tiny CNN blind to its input, for screening tests",
        )
    ]
