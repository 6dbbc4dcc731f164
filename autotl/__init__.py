"""autotl: AutoML search over pretrained image backbones, by transfer learning done right.

The public API is small: :func:`search` runs a search and returns a :class:`Run`,
``Run(path)`` opens any run folder, :func:`doctor` checks a data folder's health, :class:`SearchOptions` declares
the search's options; the plugin contract (``hookimpl``,
``BackboneSpec``, ``Preprocessing``, ``SampleSpec``); and the errors.  Everything
heavy (TensorFlow, Optuna) is imported by the functions that need it, so
``import autotl`` and ``autotl --help`` answer at once.
"""

from __future__ import annotations

from autotl._version import __version__
from autotl.api import Run, SearchOptions, doctor, search
from autotl.errors import AutotlError, PluginError, TrialFailed, UsageError
from autotl.hookspec import hookimpl
from autotl.spec import BackboneSpec, Preprocessing, SampleSpec

__all__ = [
    "AutotlError",
    "BackboneSpec",
    "PluginError",
    "Preprocessing",
    "Run",
    "SampleSpec",
    "SearchOptions",
    "TrialFailed",
    "UsageError",
    "__version__",
    "doctor",
    "hookimpl",
    "search",
]
