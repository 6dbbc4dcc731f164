"""A hook that forgets to return its list."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbones():
    [small_spec("faulty_none")]
