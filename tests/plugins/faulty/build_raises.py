"""A build that raises: it needs an argument nobody passes."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


def build(input_shape, weights):
    raise RuntimeError(f"cannot build at {input_shape}: set FAULTY_DEPTH first")


@hookimpl
def autotl_backbones():
    return [small_spec("faulty_build_raises", build=build)]
