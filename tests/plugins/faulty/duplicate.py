"""A plugin that registers a name the tiny test plugin already has."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbones():
    return [small_spec("tiny")]
