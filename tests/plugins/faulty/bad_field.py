"""A spec with a weight file Keras cannot load (no known ending)."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbones():
    return [small_spec("faulty_bad_field", weights_file="faulty_bad_field.weights")]
