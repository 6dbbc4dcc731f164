"""A hook that raises when autotl calls it."""

from __future__ import annotations

from autotl import hookimpl


@hookimpl
def autotl_backbones():
    sizes = {"small": 32}
    return sizes["large"]
