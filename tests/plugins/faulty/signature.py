"""A hook function whose signature is not the hook's: pluggy refuses it when it is registered."""

from __future__ import annotations

from autotl import hookimpl
from faulty._base import small_spec


@hookimpl
def autotl_backbones(config):
    return [small_spec("faulty_signature")]
