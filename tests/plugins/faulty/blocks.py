"""A block pattern that matches no layer of the base (a typo: ``block_out`` for ``blockN_out``)."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbones():
    return [small_spec("faulty_blocks", block_pattern=r"^block_out$")]
