"""Optional extras: what a feature needs that ``pip install autotl`` does not bring, said in one line.

ONNX export needs ``autotl[onnx]``, MLflow logging ``autotl[mlflow]``, the
dashboard ``autotl[dashboard]``.  A feature checks before it starts, so a
missing package is one :class:`~autotl.errors.UsageError` naming the extra to
install, never an ``ImportError`` halfway through (Optuna's habit for its
optional integrations).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from autotl.errors import UsageError

__all__ = ["EXTRAS", "missing", "require"]

#: extra -> the import names it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "onnx": ("tf2onnx", "onnx", "onnxruntime"),
    "mlflow": ("mlflow", "optuna_integration"),
    "dashboard": ("optuna_dashboard",),
}


def _found(module: str) -> bool:
    if sys.modules.get(module) is not None:  # imported already (some replace their module object)
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # an import hook that refuses it, or a module set to None
        return False


def missing(modules: Sequence[str]) -> list[str]:
    """The ``modules`` that cannot be imported here (found without importing them)."""
    return [m for m in modules if not _found(m)]


def require(extra: str, what: str) -> None:
    """Raise a one-line UsageError when ``extra``'s packages are not installed; ``what`` is the feature asked for."""
    absent = missing(EXTRAS[extra])
    if absent:
        raise UsageError(
            f"{what} needs {', '.join(absent)}, which autotl installs only with an extra: "
            f"pip install 'autotl[{extra}]'"
        )
