"""Section 6's data: what made the results (versions, plugins, weights, data, seeds, command, files)."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from autotl.errors import first_line
from autotl.report._common import sampler_of
from autotl.run.folder import RunFolder
from autotl.scoring.objective import Objectives

if TYPE_CHECKING:
    from optuna import Study


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _module_version(name: str) -> str:
    import importlib

    version = None
    if _importable(name):
        try:
            version = getattr(importlib.import_module(name), "__version__", None)
        except Exception:
            version = None
    return f"module {name} {version}" if version else f"module {name} (no version)"


def _plugin_versions(used: set[str]) -> dict[str, str]:
    """Version of each plugin the trials used, from its distribution when it has one."""
    from autotl._version import __version__
    from autotl.backbones.registry import DEFAULT_PLUGINS, get_registry

    out: dict[str, str] = {}
    try:
        registry = get_registry(
            [n for n in sorted(used) if n not in DEFAULT_PLUGINS and _importable(n)]
        )
        out.update(registry.plugin_versions())
    except Exception as exc:
        out["(registry)"] = f"cannot load plugins: {first_line(exc)}"
    for name in sorted(used):
        if name not in out:
            out[name] = (
                f"built into autotl {__version__}"
                if name in DEFAULT_PLUGINS
                else _module_version(name)
            )
    return out


def _recorded_models(storage_url: str, study_name: str) -> list[dict[str, Any]]:
    """The model files the lineage tables recorded for this study (none when it has no tables)."""
    from autotl.run.lineage import list_models

    keys = ("artifact_id", "kind", "path", "sha256", "trial_number", "created")
    try:
        return [{k: m[k] for k in keys} for m in list_models(storage_url, study_name)]
    except Exception:
        return []


def _trial_weights(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("number", "backbone", "plugin", "weights_origin", "weights_sha256")
    return [{k: r[k] for k in keys} for r in sorted(rows, key=lambda r: r["number"])]


def lineage_record(
    study: Study,
    rows: list[dict[str, Any]],
    run: dict[str, Any],
    summary: dict[str, Any],
    space: dict[str, Any],
    storage_url: str,
) -> dict[str, Any]:
    from autotl._version import __version__
    from autotl.run.lineage import library_versions

    val_fraction, seed = RunFolder.split_settings(study.user_attrs.get("data") or {}, space)
    sampler = sampler_of(study, space)
    created = run.get("created")
    return {
        "autotl_version": __version__,
        "plugins": _plugin_versions({r["plugin"] for r in rows if r.get("plugin")}),
        "trials": _trial_weights(rows),
        "data_fingerprint": summary["data"]["fingerprint"],
        "data_source": summary["data"]["source"],
        "seeds": {
            "space": space.get("seed"),
            f"sampler ({sampler})": space.get("seed"),
            "split": seed,
            "val_fraction": val_fraction,
        },
        "sampler": sampler,
        "objectives": Objectives.of_study(study).names,
        "library_versions": library_versions(),
        "library_versions_at_search": study.user_attrs.get("versions") or run.get("versions"),
        "command": run.get("command") or None,
        "run_created": _dt.datetime.fromtimestamp(created).isoformat(timespec="seconds")
        if isinstance(created, (int, float))
        else None,
        "weights": run.get("weights"),
        "space": space,
        "recorded_models": _recorded_models(storage_url, study.study_name),
    }
