"""A hook that returns one spec instead of a list of them."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbones():
    return small_spec("faulty_single")
