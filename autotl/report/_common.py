"""Constants and small helpers shared by the report's modules."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Optional

from autotl.runfolder import RunFolder

REPORT_FILES = RunFolder.REPORT_FILES  # the plots' folder, as report.md and report.json name it
SCHEMA = "autotl-report-1"
TOP_CURVES = 6
MAX_MISCLASSIFIED = 24
THUMB = 64
STATES = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}


def _clean(value: Any) -> Any:
    """Strict JSON: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except Exception:
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return str(value)


def _fmt(value: Any, spec: str = "", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _epochs(history: dict[str, Any], phase: str) -> Optional[int]:
    h = (history or {}).get(phase)
    if h is None:
        return None
    return len(h.get("val_loss") or h.get("loss") or [])


def _epoch1(epoch: Optional[int]) -> Optional[int]:
    """A 0-based epoch index (as stored) as the 1-based epoch number people and the plots use."""
    return None if epoch is None else int(epoch) + 1
