"""Finding plugins and checking what they register.

Discovery happens in :func:`get_registry`, never at import: hook specs first,
then the built-in plugins, then entry points of the ``autotl`` group, then
modules named with ``--plugin``.  ``AUTOTL_DISABLE_PLUGIN_AUTOLOAD=1`` skips
the entry points (as ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` does for pytest).

A plugin is foreign code, so anything it does is caught here and said in one
line naming it: an exception when it is imported, registered or called, and a
hook that returns something other than a list of specs.  A module the user
named (``--plugin``) stops start-up; an installed distribution whose entry
point is broken only costs a warning (``Registry.warnings``), so one bad
package cannot break every command, unless its backbones are asked for.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pluggy

from autotl import hookspec
from autotl.errors import PluginError, UsageError, first_line
from autotl.spec import BackboneSpec, SampleSpec

_Spec = TypeVar("_Spec", BackboneSpec, SampleSpec)

__all__ = [
    "Registry",
    "get_plugin_manager",
    "get_registry",
    "DEFAULT_PLUGINS",
    "import_plugin",
    "register_plugin",
    "hook_items",
]

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
#: What a plugin may raise that autotl catches: everything but Ctrl-C (``SystemExit`` included).
_PLUGIN_ERRORS = (Exception, SystemExit)


def _described(exc: BaseException) -> str:
    """``Type: message`` on one line (pluggy's validation errors span several)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_plugin(module: str) -> object:
    """Import a plugin module; whatever goes wrong is one line naming the module."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            raise UsageError(
                f"cannot import plugin module {module!r} (no module named {missing!r}); "
                "check the name and that its package is installed"
            ) from None
        raise PluginError(
            f"plugin module {module!r} cannot be imported: it needs {missing or 'a module'!r}, "
            f"which is not installed ({first_line(exc)})"
        ) from None
    except _PLUGIN_ERRORS as exc:
        raise PluginError(
            f"plugin module {module!r} raised {_described(exc)} when imported; fix it or leave it out"
        ) from None


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str, who: str) -> None:
    """Register ``plugin``; pluggy validates each hook function's name and signature here."""
    if pm.is_registered(plugin) or pm.get_plugin(name) is not None:
        return
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        raise PluginError(
            f"{who}: a hook function does not match its specification in autotl/hookspec.py "
            f"({'; '.join(lines) or _described(exc)})"
        ) from None
    except _PLUGIN_ERRORS as exc:
        raise PluginError(f"{who} cannot be registered: {_described(exc)}") from None


def _check_hook_names(pm: pluggy.PluginManager, loaded: _Loaded) -> None:
    """A function marked ``@hookimpl`` whose name is no hook (a typo) is the plugin's error."""
    known = ", ".join(n for n in dir(hookspec) if n.startswith(f"{hookspec.PROJECT}_"))
    for name in list(vars(pm.hook)):
        caller = getattr(pm.hook, name)
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            problem = (
                f"plugin {impl.plugin_name!r}: {name}() is marked @hookimpl but is not an autotl "
                f"hook (the hooks are {known}); fix its name"
            )
            if impl.plugin_name not in loaded.entry_points:
                raise PluginError(problem)
            loaded.fail(loaded.distributions.pop(impl.plugin_name, impl.plugin_name), problem)
            pm.unregister(name=impl.plugin_name)


@dataclass
class _Loaded:
    """What plugin discovery found besides the plugins: distributions, warnings, broken entry points."""

    distributions: dict[str, str] = field(default_factory=dict)  # plugin name -> "dist version"
    entry_points: set[str] = field(default_factory=set)  # names of plugins from entry points
    broken: dict[str, str] = field(default_factory=dict)  # distribution -> what went wrong
    warnings: list[str] = field(default_factory=list)

    def fail(self, dist: str, reason: str) -> None:
        self.broken[dist] = reason
        self.warnings.append(
            f"plugin distribution {dist} is not loaded: {reason}; its backbones are unavailable "
            f"(fix or uninstall it, or set {DISABLE_AUTOLOAD_ENV}=1)"
        )


def _load_entry_points(pm: pluggy.PluginManager, loaded: _Loaded) -> None:
    """pluggy's ``load_setuptools_entrypoints``, one distribution at a time: a broken one is a warning."""
    import importlib.metadata as md

    for dist in list(md.distributions()):
        for ep in dist.entry_points:
            if ep.group != hookspec.PROJECT or pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            meta = dist.metadata
            label = f"{(meta['Name'] if meta is not None else None) or ep.name} {dist.version}"
            try:
                plugin = ep.load()
                register_plugin(pm, plugin, ep.name, f"plugin {ep.name!r}")
            except PluginError as exc:
                loaded.fail(label, str(exc))
                continue
            except _PLUGIN_ERRORS as exc:
                loaded.fail(label, f"entry point {ep.name} = {ep.value} raised {_described(exc)}")
                continue
            loaded.distributions[ep.name] = label
            loaded.entry_points.add(ep.name)


def _manager(plugins: Iterable[str], autoload: bool | None) -> tuple[pluggy.PluginManager, _Loaded]:
    pm = pluggy.PluginManager(hookspec.PROJECT)
    pm.add_hookspecs(hookspec)
    loaded = _Loaded()
    for name in DEFAULT_PLUGINS:
        register_plugin(pm, import_plugin(name), name, f"built-in plugin {name!r}")
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if autoload:
        _load_entry_points(pm, loaded)
    for name in plugins:
        register_plugin(pm, import_plugin(name), name, f"plugin module {name!r}")
    _check_hook_names(pm, loaded)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        who = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin {who!r}: {_described(exc)}") from None
    return pm, loaded


def get_plugin_manager(
    plugins: Iterable[str] = (), autoload: bool | None = None
) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, the entry points and ``plugins`` registered."""
    return _manager(plugins, autoload)[0]


@dataclass
class Registry:
    """Every backbone and sample the installed plugins provide, by name.

    ``warnings`` says which installed distributions could not be loaded
    (``broken``: distribution to reason); asking for an unknown backbone names them.
    """

    backbones: dict[str, BackboneSpec]
    samples: dict[str, SampleSpec]
    plugin_manager: pluggy.PluginManager
    distributions: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def backbone(self, name: str) -> BackboneSpec:
        try:
            return self.backbones[name]
        except KeyError:
            raise UsageError(
                f"unknown backbone {name!r}; `autotl plugins` lists the {len(self.backbones)} known ones: "
                f"{', '.join(sorted(self.backbones))}{self._broken_note()}"
            ) from None

    def sample(self, name: str) -> SampleSpec:
        try:
            return self.samples[name]
        except KeyError:
            raise UsageError(
                f"unknown sample {name!r}; known samples: {', '.join(sorted(self.samples))}"
                f"{self._broken_note()}"
            ) from None

    def _broken_note(self) -> str:
        """Where an unknown name may have come from: the installed distributions that failed to load."""
        if not self.broken:
            return ""
        return "; not loaded, and maybe providing it: " + "; ".join(
            f"plugin distribution {dist} ({reason})" for dist, reason in self.broken.items()
        )

    def plugin_versions(self) -> dict[str, str]:
        """Plugin name to distribution version, for lineage records."""
        return dict(self.distributions)


def hook_items(plugin: str, hook_name: str, kind: type[_Spec], function: Any) -> list[_Spec]:
    """Call one plugin's hook; anything but a list (or tuple) of ``kind`` is the plugin's error."""
    try:
        items = function()
    except _PLUGIN_ERRORS as exc:
        raise PluginError(f"plugin {plugin!r}: {hook_name}() raised {_described(exc)}") from None
    if not isinstance(items, (list, tuple)):
        got = "None (a missing return?)" if items is None else f"a {type(items).__name__}"
        raise PluginError(
            f"plugin {plugin!r}: {hook_name}() must return a list of {kind.__name__} objects, got {got}"
        )
    for item in items:
        if not isinstance(item, kind):
            raise PluginError(
                f"plugin {plugin!r}: {hook_name}() must return a list of {kind.__name__} objects, "
                f"but one item is a {type(item).__name__}"
            )
    return list(items)


def _checked(plugin: str, item: _Spec, found: Mapping[str, _Spec], kind: type[_Spec]) -> _Spec:
    try:
        item = replace(item, plugin=plugin)
        problems = item.validate()
    except _PLUGIN_ERRORS as exc:  # a spec whose fields even replace() or validate() trip over
        problems = [_described(exc)]
    if problems:
        what = "backbone" if kind is BackboneSpec else "sample"
        raise PluginError(
            f"plugin {plugin!r}: {what} {getattr(item, 'name', '?')!r}: {'; '.join(problems)}"
        )
    if item.name in found:
        raise PluginError(
            f"{kind.__name__} {item.name!r} is registered twice, by plugin {found[item.name].plugin!r} "
            f"and by plugin {plugin!r}; uninstall or rename one"
        )
    return item


def _collect(
    pm: pluggy.PluginManager, hook_name: str, kind: type[_Spec], loaded: _Loaded
) -> dict[str, _Spec]:
    found: dict[str, _Spec] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin = impl.plugin_name
        with_these = dict(found)
        try:
            for item in hook_items(plugin, hook_name, kind, impl.function):
                item = _checked(plugin, item, with_these, kind)
                with_these[item.name] = item
        except PluginError as exc:
            if plugin not in loaded.entry_points:
                raise
            loaded.fail(loaded.distributions.pop(plugin, plugin), str(exc))
            pm.unregister(name=plugin)
            continue
        found = with_these
    return found


def get_registry(plugins: Iterable[str] = (), autoload: bool | None = None) -> Registry:
    """Build the plugin manager and collect, check and index what it provides."""
    pm, loaded = _manager(plugins, autoload)
    backbones = _collect(pm, "autotl_backbones", BackboneSpec, loaded)
    samples = _collect(pm, "autotl_samples", SampleSpec, loaded)
    if loaded.broken:  # a plugin dropped by the second hook must not leave backbones behind
        backbones = {k: v for k, v in backbones.items() if pm.has_plugin(v.plugin)}
    return Registry(backbones, samples, pm, loaded.distributions, loaded.broken, loaded.warnings)
