"""A hook that returns a dict of specs by name."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbones():
    return {"faulty_dict": small_spec("faulty_dict")}
