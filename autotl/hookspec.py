"""Hook specifications: the reference manual for plugin authors.

A plugin is a module (or object) with functions marked ``@autotl.hookimpl``
and named after the hooks below.  Built-in backbones in ``plugins/`` use these
same hooks; a package adds its own through the ``autotl`` entry-point group::

    [project.entry-points.autotl]
    my_backbones = "my_package.backbones"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from autotl.spec import BackboneSpec, SampleSpec

PROJECT = "autotl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def autotl_backbones() -> list[BackboneSpec]:
    """Return the backbones this plugin provides.

    Called once, when the plugin manager is built.  Each
    :class:`autotl.BackboneSpec` is checked on registration; a bad field or a
    name another plugin already uses stops start-up with a message naming both
    plugins.  So does anything the function raises, and a return value that is
    not a list (or tuple) of specs: ``None``, one spec, a dict or a generator.
    For a plugin installed through an entry point, the same problems are a
    warning naming its distribution, and its backbones are left out.

    Before a backbone's first trial in a run, autotl builds it once and runs
    the cheap checks of :mod:`autotl.testing` (see ``checks.json`` in the run
    folder); a backbone that fails them is skipped, with the reason.

    :return: a list of specs, one per variant (``mobilenet_v2-0.35`` and
        ``mobilenet_v2-1.0`` are two backbones).
    """


@hookspec
def autotl_samples() -> list[SampleSpec]:
    """Return built-in image sets that ``autotl search --sample NAME`` can use.

    Called once, when the plugin manager is built.  ``SampleSpec.load`` is
    only called when that sample is chosen, so a sample that downloads costs
    nothing until then.  The return value follows the rules of
    :func:`autotl_backbones`: a list of :class:`autotl.SampleSpec`.
    """
