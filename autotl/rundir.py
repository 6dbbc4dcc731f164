"""Reading a run folder after its search: its study, its run.json, how it split its data.

``autotl report`` and ``autotl export`` both start from a run folder (the
``--out`` of ``autotl search``); what they need from it is read here, once.
A run folder may hold one study per search engine in the same storage: the
Optuna engine's study (``autotl`` by default) and the keras-tuner engine's
copy of its trials (``autotl-keras-tuner``, see :mod:`autotl.keras_tuner`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from autotl.errors import UsageError

__all__ = [
    "STUDY_DB", "RUN_FILE", "default_storage_url", "KERAS_TUNER_SUFFIX", "ENGINES", "storage_url_of", "open_run_study", "read_run_json",
    "split_settings", "reload_dataset", "engine_studies", "base_study_name",
]

STUDY_DB = "study.db"
RUN_FILE = "run.json"
#: The keras-tuner engine records its trials in the study named ``<study_name><KERAS_TUNER_SUFFIX>``.
KERAS_TUNER_SUFFIX = "-keras-tuner"
#: Engine of a study, by the suffix of its name (the Optuna engine's study has none).
ENGINES = {"": "optuna", KERAS_TUNER_SUFFIX: "keras-tuner"}


def default_storage_url(run_dir: Path) -> str:
    """The SQLite study of a run folder (an absolute path, so workers started elsewhere find the same file)."""
    return f"sqlite:///{(Path(run_dir) / STUDY_DB).resolve()}"


def storage_url_of(run_dir: Path, storage_url: Optional[str] = None) -> str:
    """The study storage of ``run_dir``: ``storage_url`` if given, else its ``study.db``; one-line UsageError otherwise."""
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise UsageError(f"run folder {run_dir} {what}; pass the --out folder of an `autotl search`")
    if storage_url is not None:
        return storage_url
    db = run_dir / STUDY_DB
    if not db.is_file():
        raise UsageError(f"no study in {run_dir}: it has no {STUDY_DB}; run `autotl search --out {run_dir}` first, "
                         "or pass --storage URL if its search used another storage")
    return default_storage_url(run_dir)


def open_run_study(run_dir: Path, storage_url: Optional[str], study_name: str, *, any_engine: bool = False) -> tuple[Any, str]:
    """``(study, storage URL)`` of a run folder, read-only (nothing is created).

    With ``any_engine``, a run searched only with ``--engine keras-tuner`` has no
    study ``study_name``: its keras-tuner study is opened instead.
    """
    from autotl.search import open_study

    url = storage_url_of(run_dir, storage_url)
    try:
        return open_study(url, study_name, create=False), url
    except UsageError:
        if not any_engine or study_name.endswith(KERAS_TUNER_SUFFIX):
            raise
        try:
            return open_study(url, study_name + KERAS_TUNER_SUFFIX, create=False), url
        except UsageError:
            pass
        raise


def base_study_name(study_name: str) -> str:
    """The Optuna engine's study name of a run whose studies include ``study_name``."""
    for suffix in ENGINES:
        if suffix and study_name.endswith(suffix):
            return study_name[: -len(suffix)]
    return study_name


def engine_studies(storage_url: str, study_name: str) -> list[tuple[str, str]]:
    """``(study name, engine)`` of every engine's study of this run in the storage, the Optuna engine's first."""
    import optuna

    base = base_study_name(study_name)
    try:
        names = set(optuna.study.get_all_study_names(storage_url))
    except Exception:
        return []
    return [(base + suffix, engine) for suffix, engine in ENGINES.items() if base + suffix in names]


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """The run folder's ``run.json`` (what ``autotl search`` recorded), or ``{}`` when absent or unreadable."""
    try:
        value = json.loads((run_dir / RUN_FILE).read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def split_settings(data_summary: dict[str, Any], space: dict[str, Any]) -> tuple[float, int]:
    """The val_fraction and seed the search split its data with: from the data summary's split text, else the space."""
    m = re.search(r"val_fraction=([0-9.eE+-]+), seed=(-?\d+)", str((data_summary or {}).get("split", "")))
    if m:
        return float(m.group(1)), int(m.group(2))
    return float(space.get("val_fraction", 0.2)), int(space.get("seed", 0))


def reload_dataset(source: str, val_fraction: float, seed: int, plugins: Sequence[str] = ()) -> Any:
    """The search's data set again, split the same way: a ``sample:NAME`` of a plugin, or a folder."""
    from autotl import data as data_mod

    if source.startswith("sample:"):
        from autotl.registry import get_registry

        images, labels, names = get_registry(list(plugins)).sample(source.split(":", 1)[1]).load()
        return data_mod.from_arrays(images, labels, names, source, val_fraction, seed)
    return data_mod.load_folder(source, val_fraction, seed)
