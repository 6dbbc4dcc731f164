"""Raises something other than ImportError when imported (a bug at module level)."""

from __future__ import annotations

CONFIG = {}
BATCH = CONFIG["batch"]  # KeyError at import
