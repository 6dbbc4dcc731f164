"""A hook written as a generator (it yields specs instead of returning a list)."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbones():
    yield small_spec("faulty_generator")
