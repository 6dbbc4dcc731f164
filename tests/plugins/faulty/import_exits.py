"""Calls sys.exit() when imported (a script turned into a plugin)."""

from __future__ import annotations

import sys

sys.exit(3)
