"""autotl: AutoML search over pretrained image backbones, by transfer learning done right.

The public API is small: the plugin contract (``hookimpl``, ``BackboneSpec``,
``Preprocessing``, ``SampleSpec``), the registry, and the errors.  Everything
heavy (TensorFlow, Optuna) is imported by the functions that need it, so
``autotl --help`` answers at once.
"""

from __future__ import annotations

from autotl.errors import AutotlError, PluginError, TrialFailed, UsageError
from autotl.hookspec import hookimpl
from autotl.spec import BackboneSpec, Preprocessing, SampleSpec

__version__ = "0.1.0"

__all__ = [
    "AutotlError",
    "BackboneSpec",
    "PluginError",
    "Preprocessing",
    "SampleSpec",
    "TrialFailed",
    "UsageError",
    "__version__",
    "hookimpl",
]
