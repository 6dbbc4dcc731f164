"""The run folder: the one type that knows every path in it, writes it atomically and guards whose data it holds.

A run folder is the ``--out`` of ``autotl search``.  Both search engines write
it, and report, export, lineage and the Python API read it, all through
:class:`RunFolder`; no other module spells a file name of it::

    RUN_DIR/
      study.db                the Optuna storage (SQLite), unless --storage names another
      run.json                what the search was given: data fingerprint and source, space, weights, command
      classes.json            class names, in output order
      checks.json             each backbone's checks before its first trial, and why one was skipped
      best_model.keras        the best trial's model, assembled from its stored layers
      best_model.json         which trial best_model.keras is (the best-model marker)
      trials/NNNN/            what a trial trained (trained_layers.npz); model.keras once assembled
      artifacts/              the artifact store (unless --artifacts names another): trials' layers, best models, exports
      manifest.jsonl          every data file once: size, mtime, SHA-256, class, split, why it was skipped
      cache/                  the frozen-feature cache (unless --cache-dir names another)
      deploy_costs.json       deploy costs (TFLite latency, size, parameters) per backbone and head shape
      health/                 data health (`autotl doctor`, Run.data_issues()): issues.csv, health.json, report.html
      logs/                   the extra workers' output
      keras_tuner/            the keras-tuner engine's project, its best_model.keras and marker
      ensemble/               selection.json (the ensemble of the top trials), its .keras models and
                              predictions/*.npy (each member's probabilities, cached)
      report.html, report.md, report.json, report_files/, report.stamp.json (the study state it shows)

Everything is written to a temporary name and renamed into place, so a reader
never sees half a file and a killed writer leaves the previous one.  A run
folder belongs to one data set: :meth:`RunFolder.claim` refuses to mix two.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.errors import UsageError

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

    from autotl.backbones.registry import Registry
    from autotl.data.dataset import Dataset

__all__ = ["RunFolder", "ENGINES", "OPTUNA", "KERAS_TUNER", "atomic_write"]

OPTUNA, KERAS_TUNER = "optuna", "keras-tuner"
#: Engine to (study-name suffix, subfolder of its own files).  The Optuna engine's study is ``<study_name>``,
#: the keras-tuner engine's copy of its trials ``<study_name>-keras-tuner``.
ENGINES: dict[str, tuple[str, str]] = {
    OPTUNA: ("", ""),
    KERAS_TUNER: ("-keras-tuner", "keras_tuner"),
}


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


class RunFolder:
    """Paths, writes and checks of one run folder (see the module doc for its layout)."""

    STUDY_DB = "study.db"
    RUN_FILE = "run.json"
    CLASSES_FILE = "classes.json"
    CHECKS_FILE = "checks.json"
    BEST_MODEL = "best_model.keras"
    BEST_MARKER = "best_model.json"
    TRIALS = "trials"
    TRIAL_LAYERS = "trained_layers.npz"
    TRIAL_MODEL = "model.keras"
    CACHE = "cache"
    LOGS = "logs"
    DEPLOY_COSTS = "deploy_costs.json"
    ENSEMBLE = "ensemble"
    ENSEMBLE_SELECTION = "selection.json"
    ENSEMBLE_PREDICTIONS = "predictions"
    MANIFEST = "manifest.jsonl"
    ARTIFACTS = "artifacts"
    HEALTH = "health"
    REPORT_STAMP = "report.stamp.json"
    REPORT_HTML, REPORT_MD, REPORT_JSON, REPORT_FILES = (
        "report.html",
        "report.md",
        "report.json",
        "report_files",
    )

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- paths ----------------------------------------------------------------------------------

    def engine_dir(self, engine: str = OPTUNA) -> Path:
        """Where an engine keeps its own best model (the run folder itself for Optuna)."""
        return self.path / ENGINES[engine][1] if ENGINES[engine][1] else self.path

    def best_model(self, engine: str = OPTUNA) -> Path:
        return self.engine_dir(engine) / self.BEST_MODEL

    def best_marker(self, engine: str = OPTUNA) -> Path:
        return self.engine_dir(engine) / self.BEST_MARKER

    def classes_file(self, engine: str = OPTUNA) -> Path:
        return self.engine_dir(engine) / self.CLASSES_FILE

    @property
    def study_db(self) -> Path:
        return self.path / self.STUDY_DB

    @property
    def run_file(self) -> Path:
        return self.path / self.RUN_FILE

    @property
    def checks_file(self) -> Path:
        """Each backbone's checks before its first trial in this run, and the reason one was skipped."""
        return self.path / self.CHECKS_FILE

    @property
    def cache_dir(self) -> Path:
        return self.path / self.CACHE

    @property
    def logs_dir(self) -> Path:
        return self.path / self.LOGS

    @property
    def deploy_costs_file(self) -> Path:
        return self.path / self.DEPLOY_COSTS

    @property
    def deploy_costs_lock(self) -> Path:
        """Held while deploy costs are measured and written, so workers neither time at once nor lose a write."""
        return self.path / f".{self.DEPLOY_COSTS}.lock"

    @property
    def manifest(self) -> Path:
        """The data set's manifest (:mod:`autotl.data.manifest`): what a scan need not read again."""
        return self.path / self.MANIFEST

    @property
    def artifacts_dir(self) -> Path:
        """The default artifact store: a folder of the run."""
        return self.path / self.ARTIFACTS

    @property
    def health_dir(self) -> Path:
        """Data health's files: ``issues.csv`` (one row per finding), ``health.json``, ``report.html``."""
        return self.path / self.HEALTH

    def health_file(self, name: str) -> Path:
        """``issues.csv``, ``health.json`` or ``report.html`` of the data health check."""
        return self.health_dir / name

    @property
    def report_stamp(self) -> Path:
        return self.path / self.REPORT_STAMP

    def artifact_store(self, url: Optional[str] = None) -> Any:
        """The artifact store ``url`` names (a study records it as ``artifacts``), else the run folder's."""
        from autotl.run.artifacts import open_store

        return open_store(url, self.artifacts_dir)

    @property
    def report_files(self) -> Path:
        return self.path / self.REPORT_FILES

    def report(self, kind: str) -> Path:
        """``report.html``, ``report.md`` or ``report.json`` by ``kind`` (html, md, json)."""
        return (
            self.path
            / {"html": self.REPORT_HTML, "md": self.REPORT_MD, "json": self.REPORT_JSON}[kind]
        )

    def trial_dir(self, number: int) -> Path:
        return self.path / self.TRIALS / f"{number:04d}"

    def trial_model(self, number: int) -> Path:
        return self.trial_dir(number) / self.TRIAL_MODEL

    @property
    def ensemble_dir(self) -> Path:
        return self.path / self.ENSEMBLE

    @property
    def ensemble_selection(self) -> Path:
        """The ensemble chosen from the run's top trials, and its scores (``autotl ensemble``)."""
        return self.ensemble_dir / self.ENSEMBLE_SELECTION

    def ensemble_predictions(self, split: str, trial: int, tta: Optional[str] = None) -> Path:
        """Trial ``trial``'s probabilities on the images ``split`` names (a key that changes with them), as ``.npy``."""
        suffix = f"-{tta}" if tta else ""
        return (
            self.ensemble_dir / self.ENSEMBLE_PREDICTIONS / f"{split}-t{int(trial):04d}{suffix}.npy"
        )

    def ensemble_model(self, name: str) -> Path:
        """An ensemble's (or a test-time-augmented trial's) ``.keras`` model, by its variant name."""
        return self.ensemble_dir / f"{name}.keras"

    def relative(self, path: Path) -> str:
        """``path`` as recorded in a trial's attributes: relative to the run folder."""
        return str(Path(path).relative_to(self.path))

    # -- storage --------------------------------------------------------------------------------

    def default_storage_url(self) -> str:
        """The SQLite study of the run folder (an absolute path, so workers started elsewhere find the same file)."""
        return f"sqlite:///{self.study_db.resolve()}"

    def storage_url(self, given: Optional[str] = None) -> str:
        """``given`` if any, else the run folder's ``study.db``."""
        return given or self.default_storage_url()

    @staticmethod
    def study_name(base: str, engine: str = OPTUNA) -> str:
        """The name of an engine's study in a run whose Optuna study is ``base``."""
        return base + ENGINES[engine][0]

    @staticmethod
    def engine_of(study_name: str) -> tuple[str, str]:
        """``(engine, base study name)`` of a study name."""
        for engine, (suffix, _) in ENGINES.items():
            if suffix and study_name.endswith(suffix):
                return engine, study_name[: -len(suffix)]
        return OPTUNA, study_name

    # -- reading --------------------------------------------------------------------------------

    def require(self, storage_url: Optional[str] = None) -> str:
        """The storage URL of an existing run; a one-line UsageError when this is not a run folder."""
        if storage_url is not None and not self.path.exists():
            self.prepare()  # another machine's view of a shared study: this folder is its workspace
        if not self.path.is_dir():
            what = "is a file, not a folder" if self.path.exists() else "does not exist"
            raise UsageError(
                f"run folder {self.path} {what}; pass the --out folder of an `autotl search`"
            )
        if storage_url is not None:
            return storage_url
        if not self.study_db.is_file():
            raise UsageError(
                f"no study in {self.path}: it has no {self.STUDY_DB}; run `autotl search --out {self.path}` first, "
                "or pass --storage URL if its search used another storage"
            )
        return self.default_storage_url()

    def open_study(
        self,
        storage_url: Optional[str] = None,
        study_name: str = "autotl",
        *,
        any_engine: bool = False,
    ) -> tuple[Any, str]:
        """``(study, storage URL)`` of the run, loaded (nothing is created or sampled).

        With ``any_engine``, a run searched only with ``--engine keras-tuner`` has
        no study ``study_name``: its keras-tuner study is opened instead.
        """
        from autotl.run.storage import load_study

        url = self.require(storage_url)
        try:
            return load_study(url, study_name), url
        except UsageError:
            engine, _ = self.engine_of(study_name)
            if not any_engine or engine != OPTUNA:
                raise
            try:
                return load_study(url, self.study_name(study_name, KERAS_TUNER)), url
            except UsageError:
                pass
            raise

    def engine_studies(self, storage_url: str, study_name: str) -> list[tuple[str, str]]:
        """``(study name, engine)`` of every engine's study of this run in the storage, the Optuna engine's first."""
        from autotl.run.storage import study_names

        _, base = self.engine_of(study_name)
        names = set(study_names(storage_url))
        return [(self.study_name(base, e), e) for e in ENGINES if self.study_name(base, e) in names]

    def record(self) -> dict[str, Any]:
        """``run.json`` (what the search was given), or ``{}`` when absent or unreadable."""
        return self._read_json(self.run_file)

    def checks(self) -> dict[str, Any]:
        """``checks.json`` (backbone name to its recorded checks), or ``{}`` when absent or unreadable."""
        found = self._read_json(self.checks_file)
        return found if isinstance(found, dict) else {}

    def class_names(self, study: Optional[Study] = None, engine: str = OPTUNA) -> list[str]:
        """The classes the run's models predict, in output order: from the study, run.json or classes.json."""
        names = (getattr(study, "user_attrs", None) or {}).get("class_names") or self.record().get(
            "class_names"
        )
        if not names:
            found = self._read_json(self.classes_file(engine))
            names = found if isinstance(found, list) else None
        if not names:
            raise UsageError(
                f"cannot find the class names of {self.path} (no classes.json, run.json or study attribute)"
            )
        return [str(c) for c in names]

    def best_trial_number(self, engine: str = OPTUNA) -> Optional[int]:
        """The trial the engine's ``best_model.keras`` holds, by its marker (None when there is none)."""
        if not self.best_model(engine).is_file():
            return None
        trial = self._read_json(self.best_marker(engine)).get("trial")
        return int(trial) if isinstance(trial, int) else None

    def trial_layers(self, trial: FrozenTrial, store: Any = None) -> Optional[Path]:
        """The stored layers of ``trial`` (a FrozenTrial or its number), or None when they were not kept.

        Layers another machine stored are fetched from the artifact ``store``
        (the trial names them in ``layers_artifact``) into this run folder.
        """
        number = trial if isinstance(trial, int) else trial.number
        attrs = {} if isinstance(trial, int) else (trial.user_attrs or {})
        recorded = attrs.get("weights_path")
        local = self.trial_dir(number) / self.TRIAL_LAYERS
        for path in (self.path / recorded if recorded else None, local):
            if path is not None and path.is_file():
                return path
        if store is not None and attrs.get("layers_artifact"):
            from optuna.artifacts.exceptions import ArtifactNotFound

            from autotl.run.artifacts import download

            try:
                return download(store, attrs["layers_artifact"], local)
            except ArtifactNotFound:
                return None
        return None

    def kept_trials(self) -> list[int]:
        """Trials whose layers are stored in the run folder."""
        folder = self.path / self.TRIALS
        return sorted(
            int(p.parent.name)
            for p in folder.glob(f"*/{self.TRIAL_LAYERS}")
            if p.parent.name.isdigit()
        )

    def reload_dataset(
        self,
        source: Optional[str] = None,
        plugins: Iterable[str] = (),
        registry: Optional[Registry] = None,
        study: Optional[Study] = None,
    ) -> tuple[Any, bool]:
        """``(dataset, same)``: the search's data set again, split the same way, and whether it is exactly the
        search's (its fingerprint is the recorded one).  ``source`` replaces a data folder that moved."""
        from autotl.data import dataset as data_mod

        record = self.record()
        summary = (getattr(study, "user_attrs", None) or {}).get("data") or {}
        space = (getattr(study, "user_attrs", None) or {}).get("space") or record.get("space") or {}
        source = source or record.get("source") or summary.get("source")
        if not source:
            raise UsageError(
                f"{self.path} does not record where its data came from; pass --data DATA_DIR"
            )
        val_fraction, seed = self.split_settings(summary or record, space)
        if source.startswith("sample:"):
            if registry is None:
                from autotl.backbones.registry import get_registry

                registry = get_registry(list(plugins))
            images, labels, names = registry.sample(source.split(":", 1)[1]).load()
            dataset = data_mod.from_arrays(images, labels, names, source, val_fraction, seed)
        else:
            if not Path(source).is_dir():
                raise UsageError(f"the search's data folder {source} is gone; pass --data DATA_DIR")
            manifest = self.manifest if self.path.is_dir() else None
            dataset = data_mod.load_folder(source, val_fraction, seed, manifest=manifest)
        dataset = self._with_test_split(dataset, source, space, seed)
        excluded = summary.get("exclusions") or record.get("exclusions")
        if excluded:  # the files the search left out (autotl.data.exclude), left out again
            from autotl.data.exclude import Exclusion, apply_exclusions

            dataset = apply_exclusions(dataset, Exclusion.from_record(excluded))
        expected = record.get("data_fingerprint") or summary.get("fingerprint")
        return dataset, bool(expected) and dataset.fingerprint == expected

    @staticmethod
    def _with_test_split(dataset: Dataset, source: str, space: Mapping[str, Any], seed: int) -> Any:
        """The search's test split again (``autotl.data.holdout``): its ``test/`` folder or ``test_fraction``."""
        from autotl.data.holdout import add_test_split

        folder = None if source.startswith("sample:") else source
        return add_test_split(dataset, folder, float(space.get("test_fraction") or 0.0), seed)

    @staticmethod
    def split_settings(summary: Mapping[str, Any], space: Mapping[str, Any]) -> tuple[float, int]:
        """The val_fraction and seed the search split its data with: from the summary's split text, else the space."""
        m = re.search(
            r"val_fraction=([0-9.eE+-]+), seed=(-?\d+)", str((summary or {}).get("split", ""))
        )
        if m:
            return float(m.group(1)), int(m.group(2))
        return float(space.get("val_fraction", 0.2)), int(space.get("seed", 0))

    # -- writing --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the folder, or say in one line why it cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UsageError(
                f"cannot write to run folder {self.path} ({exc.strerror}); pass a writable --out"
            ) from None

    def claim(
        self,
        dataset: Dataset,
        record: Mapping[str, Any],
        *,
        engine: str = OPTUNA,
        must_match: Mapping[str, Any] | None = None,
    ) -> None:
        """Tie the folder to ``dataset`` (and an engine's settings in ``must_match``), or refuse in one line.

        The first search writes ``run.json`` with ``record``; later ones (resumes,
        other workers, the other engine) must bring the same data fingerprint,
        and the same ``must_match`` settings as that engine recorded before.
        """
        self.prepare()
        old = self.record()
        if old:
            if old.get("data_fingerprint") != dataset.fingerprint:
                what = (
                    "the same folder with other files, another split or other files excluded"
                    if old.get("source") == dataset.source
                    else old.get("source")
                )
                raise UsageError(
                    f"run folder {self.path} holds a search on other data ({what}); "
                    f"pass another --out for {dataset.source}"
                )
            before = (old.get("engines") or {}).get(engine)
            if before is not None and must_match:
                for key, value in must_match.items():
                    if key in before and before[key] != _plain(value):
                        what = (
                            f"the {before[key]} {key}"
                            if isinstance(before[key], (str, int, float))
                            else f"another {key}"
                        )
                        raise UsageError(
                            f"{self.path} holds a {engine} search with {what}; pass another --out for this one"
                        )
            if must_match and before is None:
                self.write_json(
                    self.run_file,
                    {**old, "engines": {**(old.get("engines") or {}), engine: _plain(must_match)}},
                )
        else:
            base = {
                "data_fingerprint": dataset.fingerprint,
                "class_names": list(dataset.class_names),
                "source": dataset.source,
                "split": dataset.split,
                **({"exclusions": dataset.exclusions} if dataset.exclusions else {}),
                "created": time.time(),
                **record,
            }
            if must_match:
                base["engines"] = {engine: _plain(must_match)}
            self.write_json(self.run_file, base)
        self.classes_file(engine).parent.mkdir(parents=True, exist_ok=True)
        self.write_json(self.classes_file(engine), list(dataset.class_names))

    def write_json(self, path: Path, value: Any) -> Path:
        return atomic_write(path, json.dumps(_plain(value), indent=2) + "\n")

    def copy(self, src: Path, dst: Path) -> Path:
        """Copy ``src`` to ``dst`` atomically."""
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return dst

    def install_best(
        self,
        model_file: Path,
        number: int,
        params: Mapping[str, Any],
        engine: str = OPTUNA,
        **marker: Any,
    ) -> Path:
        """Make ``model_file`` the engine's ``best_model.keras`` and mark which trial (``number``) it is."""
        target = self.best_model(engine)
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(model_file).resolve() != target.resolve():
            self.copy(Path(model_file), target)
        self.write_json(
            self.best_marker(engine), {"trial": number, "params": dict(params), **marker}
        )
        return target

    def save_trial_layers(self, number: int, weights: dict[str, list[Any]]) -> str:
        """Store what trial ``number`` trained (a plain ``.npz``, no pickle); return its path relative to the folder."""
        from autotl.training.model import save_layer_weights

        folder = self.trial_dir(number)
        folder.mkdir(parents=True, exist_ok=True)
        save_layer_weights(folder / self.TRIAL_LAYERS, weights)
        return self.relative(folder / self.TRIAL_LAYERS)

    def drop_trial(self, number: int) -> None:
        """Forget a trial's stored layers and model (it fell out of the ``--keep-models`` best)."""
        shutil.rmtree(self.trial_dir(number), ignore_errors=True)

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, (dict, list)) else {}


def _plain(value: Any) -> Any:
    """JSON's view of ``value`` (tuples become lists), so what is compared is what is stored."""
    return json.loads(json.dumps(value, default=str))
