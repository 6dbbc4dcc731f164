"""A hook function with a typo in its name: no such hook."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbone():
    return [small_spec("faulty_hook_name")]
