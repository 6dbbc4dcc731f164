"""Imports a dependency that is not installed."""

from __future__ import annotations

import autotl_no_such_dependency  # noqa: F401
