"""Finding plugins and checking what they register.

Discovery happens in :func:`get_registry`, never at import: hook specs first,
then the built-in plugins, then entry points of the ``autotl`` group, then
modules named with ``--plugin``.  ``AUTOTL_DISABLE_PLUGIN_AUTOLOAD=1`` skips
the entry points (as ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` does for pytest).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

import pluggy

from autotl import hookspec
from autotl.errors import PluginError, UsageError
from autotl.spec import BackboneSpec, SampleSpec

__all__ = ["Registry", "get_plugin_manager", "get_registry", "DEFAULT_PLUGINS"]

#: The built-in plugins, registered exactly as a third-party one would be.
DEFAULT_PLUGINS = (
    "autotl_plugins.mobilenet",
    "autotl_plugins.mobilenet_v2",
    "autotl_plugins.mobilenet_v3",
    "autotl_plugins.efficientnet",
    "autotl_plugins.resnet",
    "autotl_plugins.densenet",
    "autotl_plugins.nasnet",
    "autotl_plugins.inception",
    "autotl_plugins.convnext",
    "autotl_plugins.digits",
)

DISABLE_AUTOLOAD_ENV = "AUTOTL_DISABLE_PLUGIN_AUTOLOAD"


def _import(module: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(
            f"cannot import plugin module {module!r} ({exc}); check the name and that its package is installed"
        ) from None


def get_plugin_manager(
    plugins: Iterable[str] = (), autoload: bool | None = None
) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, the entry points and ``plugins`` registered."""
    pm = pluggy.PluginManager(hookspec.PROJECT)
    pm.add_hookspecs(hookspec)
    for name in DEFAULT_PLUGINS:
        pm.register(_import(name), name=name)
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if autoload:
        pm.load_setuptools_entrypoints(hookspec.PROJECT)
    for name in plugins:
        if pm.get_plugin(name) is None:
            pm.register(_import(name), name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r}: {exc}") from None
    return pm


@dataclass
class Registry:
    """Every backbone and sample the installed plugins provide, by name."""

    backbones: dict[str, BackboneSpec]
    samples: dict[str, SampleSpec]
    plugin_manager: pluggy.PluginManager

    def backbone(self, name: str) -> BackboneSpec:
        try:
            return self.backbones[name]
        except KeyError:
            raise UsageError(
                f"unknown backbone {name!r}; `autotl plugins` lists the {len(self.backbones)} known ones: {', '.join(sorted(self.backbones))}"
            ) from None

    def sample(self, name: str) -> SampleSpec:
        try:
            return self.samples[name]
        except KeyError:
            raise UsageError(
                f"unknown sample {name!r}; known samples: {', '.join(sorted(self.samples))}"
            ) from None

    def plugin_versions(self) -> dict[str, str]:
        """Plugin name to distribution version, for lineage records."""
        out = {}
        for name, dist in self.plugin_manager.list_plugin_distinfo():
            out[self.plugin_manager.get_name(name) or str(name)] = (
                f"{dist.project_name} {dist.version}"
            )
        return out


def _collect(pm: pluggy.PluginManager, hook_name: str, kind: type) -> dict:
    found: dict = {}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin = impl.plugin_name
        try:
            items = impl.function()
        except Exception as exc:  # a plugin's own bug: name it
            raise PluginError(
                f"plugin {plugin!r}: {hook_name}() raised {type(exc).__name__}: {exc}"
            ) from None
        if items is None:
            continue
        for item in items:
            if not isinstance(item, kind):
                raise PluginError(
                    f"plugin {plugin!r}: {hook_name}() must return {kind.__name__} objects, got {type(item).__name__}"
                )
            item = replace(item, plugin=plugin)
            problems = item.validate() if isinstance(item, BackboneSpec) else []
            if problems:
                raise PluginError(
                    f"plugin {plugin!r}: backbone {item.name!r}: {'; '.join(problems)}"
                )
            if item.name in found:
                raise PluginError(
                    f"{kind.__name__} {item.name!r} is registered twice, by plugin {found[item.name].plugin!r} and by plugin {plugin!r}; uninstall or rename one"
                )
            found[item.name] = item
    return found


def get_registry(plugins: Iterable[str] = (), autoload: bool | None = None) -> Registry:
    """Build the plugin manager and collect, check and index what it provides."""
    pm = get_plugin_manager(plugins, autoload)
    return Registry(
        _collect(pm, "autotl_backbones", BackboneSpec),
        _collect(pm, "autotl_samples", SampleSpec),
        pm,
    )
