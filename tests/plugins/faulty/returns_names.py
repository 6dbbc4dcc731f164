"""A hook that returns backbone names (strings) instead of specs."""

from __future__ import annotations

from autotl import hookimpl


@hookimpl
def autotl_backbones():
    return ["faulty_names"]
