"""MLflow: a study's trials as nested MLflow runs, its best model in the model registry, an export's formats registered.

One implementation logs from the study itself, so a finished run
(``autotl mlflow RUN_DIR URI``) and a running search (``autotl search ...
--mlflow URI``, which calls :meth:`StudyLogger.trial` as each trial finishes
and :meth:`StudyLogger.sync` when the search ends) write the same thing:

* one **parent run** per study (experiment ``autotl``, or ``$MLFLOW_EXPERIMENT_NAME``;
  named after the run folder), holding the search space as params, the data
  and objectives as tags, and the best model;
* one **child run per finished trial**, nested under it: the sampled params, the
  objective values and Optuna's tags (number, state, direction, distributions)
  through optuna-integration's ``MLflowCallback``, then autotl's own: the final
  metrics, the per-epoch curves of both phases (``phase1/loss``,
  ``phase2/val_accuracy``, ... by epoch), which phase it reached, the gate's
  verdict, the backbone, plugin and weights hash, and its stage;
* the **best model** logged with MLflow's Keras flavour (a signature: uint8
  ``image [-1, -1, -1, 3]`` in, ``probabilities`` out; an input example) and
  registered as a version of the registered model (default: the run folder's
  name), with the model file's lineage (``autotl lineage``) as version tags.

Logging is idempotent: every run carries ``autotl.study`` (a key of the run
folder's study) and trial runs ``autotl.trial``; a trial already logged is
skipped, a model version of the same file is not registered twice.  So a
resumed search, or ``autotl mlflow`` after a search that logged, adds only what
is new.

Why not ``MLflowCallback`` alone: it logs a trial's final values only (no
curves), sets the process-wide tracking URI, opens a new run on every call (no
resume), and is deprecated since optuna-integration 4.9 (moving to OptunaHub).
autotl uses it for what it does well -- the params, values and Optuna's tags of
a trial's run -- on the run autotl created, with the tracking URI restored after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.errors import first_line
from autotl.integrations._mlflow_io import (
    check_server,
    client_for,
    flat,
    fluent,
    lineage_tags,
    log_keras,
    quietly,
    require_mlflow,
)
from autotl.run.folder import RunFolder

if TYPE_CHECKING:
    import optuna

__all__ = [
    "StudyLogger",
    "MlflowLog",
    "log_study",
    "register_export",
    "search_hook",
    "check_server",
    "require_mlflow",
]

EXPERIMENT = "autotl"
STUDY_TAG, TRIAL_TAG, DONE_TAG = "autotl.study", "autotl.trial", "autotl.logged"
SHA_TAG = "autotl.sha256"
FINISHED = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
#: Trial user attributes logged as tags of its run (``autotl.<name>``).
TRIAL_TAGS = (
    "backbone",
    "plugin",
    "weights_sha256",
    "weights_origin",
    "gate",
    "gate_reason",
    "head_stable_epoch",
    "phase2_kept",
    "cut",
    "unfrozen_layers",
    "stage",
    "fail_reason",
    "fail_kind",
)


@dataclass
class MlflowLog:
    """What a sync left in MLflow: the experiment, the study's parent run, each trial's run, the model version."""

    uri: str
    experiment_id: str
    parent_run_id: str
    trial_runs: dict[int, str] = field(default_factory=dict)  # every logged trial: number -> run id
    new: list[int] = field(default_factory=list)  # trials this call logged
    model_name: Optional[str] = None
    model_version: Optional[str] = None  # the best model's version (new or found)


def study_key(run: RunFolder, study_name: str) -> str:
    """What identifies a study in MLflow: its name, its data's fingerprint and when its run folder was made."""
    try:
        record = json.loads(run.run_file.read_text())
    except (OSError, ValueError):
        record = {}
    parts = [study_name, str(record.get("data_fingerprint")), str(record.get("created"))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _name(trial: optuna.trial.FrozenTrial) -> str:
    return f"trial {trial.number}"


def _ms(when: Optional[datetime]) -> Optional[int]:
    return None if when is None else int(when.timestamp() * 1000)


class StudyLogger:
    """Logs one study to one MLflow tracking server: its parent run, a run per finished trial, the best model."""

    def __init__(
        self,
        uri: str,
        run: RunFolder,
        study: optuna.Study,
        experiment: Optional[str] = None,
        model_name: Optional[str] = None,
    ) -> None:
        self.uri, self.run, self.study = uri, run, study
        self.client = client_for(uri)
        self.key = study_key(run, study.study_name)
        self.model_name = model_name or run.path.resolve().name
        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        self.parent = self._parent()
        self.logged = self._logged()

    def _parent(self) -> str:
        """The study's parent run: found by its key, else created with the space, data and objectives."""
        hits = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{STUDY_TAG}` = '{self.key}' and tags.`{TRIAL_TAG}` = 'study'",
        )
        if hits:
            return hits[0].info.run_id
        attrs = self.study.user_attrs
        tags = {
            STUDY_TAG: self.key,
            TRIAL_TAG: "study",
            "autotl.run_dir": str(self.run.path.resolve()),
            "autotl.study_name": self.study.study_name,
            **flat(
                "autotl.data", {k: v for k, v in (attrs.get("data") or {}).items() if k != "counts"}
            ),
            "autotl.objectives": ",".join(attrs.get("objectives") or ["accuracy"]),
            "autotl.sampler": str(attrs.get("sampler", "")),
        }
        parent = self.client.create_run(
            self.experiment_id, run_name=self.run.path.resolve().name, tags=tags
        )
        run_id = parent.info.run_id
        from mlflow.entities import Param

        space = flat("", attrs.get("space") or {})
        params = [Param(k, v[:6000]) for k, v in space.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(run_id, params=params[start : start + 100])
        return run_id

    def _logged(self) -> dict[int, str]:
        """Trials whose run was finished by an earlier call; a run left half-written is deleted, to be redone."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{STUDY_TAG}` = '{self.key}'", max_results=50000
        )
        done: dict[int, str] = {}
        for r in runs:
            number = r.data.tags.get(TRIAL_TAG, "")
            if not number.isdigit():  # the study's own run, an export's run
                continue
            if r.data.tags.get(DONE_TAG) == "1":
                done[int(number)] = r.info.run_id
            else:
                self.client.delete_run(r.info.run_id)
        return done

    def pending(self) -> list[optuna.trial.FrozenTrial]:
        """Finished trials not logged yet, in trial order."""
        return [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.state.name in FINISHED and t.number not in self.logged
        ]

    @quietly
    def trial(self, trial: optuna.trial.FrozenTrial) -> Optional[str]:
        """Log one finished trial as a child run (unless it is logged already); its run id."""
        if trial.number in self.logged or trial.state.name not in FINISHED:
            return self.logged.get(trial.number)
        tags = {
            "mlflow.parentRunId": self.parent,
            STUDY_TAG: self.key,
            TRIAL_TAG: str(trial.number),
        }
        created = self.client.create_run(
            self.experiment_id, start_time=_ms(trial.datetime_start), tags=tags,
            run_name=_name(trial),
        )  # fmt: skip
        run_id = created.info.run_id
        self._optuna_fields(trial, run_id)
        self._autotl_fields(trial, run_id)
        self.client.set_terminated(run_id, FINISHED[trial.state.name], _ms(trial.datetime_complete))
        self.client.set_tag(run_id, DONE_TAG, "1")
        self.logged[trial.number] = run_id
        return run_id

    def _optuna_fields(self, trial: optuna.trial.FrozenTrial, run_id: str) -> None:
        """Params, objective values and Optuna's tags, by optuna-integration's MLflowCallback, into ``run_id``."""
        from optuna.trial import FrozenTrial
        from optuna_integration.mlflow import MLflowCallback

        from autotl.scoring.objective import Objectives

        names = [o.metric for o in Objectives.of_study(self.study)]
        resumed = FrozenTrial(
            number=trial.number, state=trial.state, value=None, values=trial.values,
            datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
            params=trial.params, distributions=trial.distributions, user_attrs={},
            system_attrs={"mlflow_run_id": run_id}, intermediate_values={}, trial_id=0,
        )  # fmt: skip
        with fluent(self.uri):
            callback = MLflowCallback(
                metric_name=names,
                create_experiment=False,
                tag_trial_user_attrs=False,
                mlflow_kwargs={"experiment_id": self.experiment_id, "run_name": _name(trial)},
            )
            callback(self.study, resumed)

    def _autotl_fields(self, trial: optuna.trial.FrozenTrial, run_id: str) -> None:
        """Final metrics, both phases' curves by epoch, the phase reached, the gate, backbone and weights."""
        from mlflow.entities import Metric, RunTag

        from autotl.scoring.objective import trial_metrics

        attrs = trial.user_attrs or {}
        when = _ms(trial.datetime_complete) or 0
        metrics = [Metric(k, v, when, 0) for k, v in trial_metrics(trial).items()]
        history = attrs.get("history") or {}
        for phase, curves in history.items():
            for name, values in (curves or {}).items():
                metrics += [
                    Metric(f"{phase}/{name}", float(v), when, e) for e, v in enumerate(values)
                ]
        if isinstance(attrs.get("seconds_total"), (int, float)):
            metrics.append(Metric("seconds", float(attrs["seconds_total"]), when, 0))
        known = {**trial.params, **attrs}  # the backbone is a param, the rest the trial's records
        tags = {f"autotl.{k}": str(known[k])[:5000] for k in TRIAL_TAGS if known.get(k) is not None}
        tags["autotl.phase"] = "2" if (history.get("phase2") or {}) else "1" if history else "none"
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    @quietly
    def best_model(self, storage_url: str) -> Optional[str]:
        """The best model in the parent run (Keras flavour) and the registry; its version (an existing one
        when this very file is registered already), or None when the run has no best model."""
        from autotl.backbones.weights import sha256_file
        from autotl.scoring.objective import best_trial

        path, best = self.run.best_model(), best_trial(self.study)
        if best is None or not path.is_file():
            return None
        sha = sha256_file(path)
        for found in self.client.search_model_versions(f"name = '{self.model_name}'"):
            if found.tags.get(SHA_TAG) == sha:
                return str(found.version)
        version = log_keras(self.uri, self.parent, path, self.model_name)
        tags = {SHA_TAG: sha, **lineage_tags(storage_url, path, best)}
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, key, value)
        self.client.set_tag(self.parent, "autotl.best_trial", str(best.number))
        return version

    @quietly
    def sync(self, storage_url: str) -> MlflowLog:
        """Every finished trial not logged yet, then the best model; the parent run marked finished."""
        new = [t.number for t in self.pending() if self.trial(t) is not None]
        version = self.best_model(storage_url)
        self.client.set_tag(self.parent, "autotl.trials_logged", str(len(self.logged)))
        self.client.set_terminated(self.parent, "FINISHED")
        return MlflowLog(
            uri=self.uri,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent,
            trial_runs=dict(self.logged),
            new=new,
            model_name=self.model_name,
            model_version=version,
        )


def log_study(
    uri: str,
    run: RunFolder,
    study: optuna.Study,
    storage_url: str,
    experiment: Optional[str] = None,
    model_name: Optional[str] = None,
) -> MlflowLog:
    """Log a study to MLflow at ``uri`` (what ``autotl mlflow RUN_DIR URI`` does); only what is new."""
    return StudyLogger(uri, run, study, experiment, model_name).sync(storage_url)


Event = Callable[[dict[str, Any]], None]


def search_hook(uri: str, run: RunFolder, storage_url: str, study_name: str, emit: Event) -> Event:
    """A search's ``on_event`` that also logs each trial to MLflow as it finishes (after passing the event on).

    The logger starts with the search (its ``start`` event: the study exists);
    a failure to log is one warning and logging stops, never the search: the
    sync when the search ends, or ``autotl mlflow RUN_DIR URI``, logs what is missing.
    """
    state: dict[str, Any] = {}

    def hook(event: dict[str, Any]) -> None:
        emit(event)
        if state.get("failed") or not (event.get("start") or "finished" in event):
            return
        try:
            if "logger" not in state:
                import optuna

                study = optuna.load_study(study_name=study_name, storage=storage_url)
                state["logger"] = StudyLogger(uri, run, study)
            if "finished" in event:
                logger = state["logger"]
                number = event["finished"]
                found = [t for t in logger.study.get_trials(deepcopy=False) if t.number == number]
                if found:
                    logger.trial(found[0])
        except Exception as exc:
            state["failed"] = True
            emit({"warning": f"MLflow logging paused ({first_line(exc)[:200]}); the search goes on, and "
                  "its end (or `autotl mlflow RUN_DIR URI`) logs what is missing"})  # fmt: skip

    return hook


@quietly
def register_export(
    uri: str,
    result: Any,
    run: RunFolder,
    study: optuna.Study,
    experiment: Optional[str] = None,
    model_name: Optional[str] = None,
) -> dict[str, str]:
    """An export's files in an MLflow run under the study's parent, each format registered as a version of
    ``<model name>-<format>`` with its parity and lineage as tags; ``{format: version}``."""
    logger = StudyLogger(uri, run, study, experiment, model_name)
    tags = {"mlflow.parentRunId": logger.parent, STUDY_TAG: logger.key, TRIAL_TAG: "export"}
    name = (
        f"export of trial {result.trial}"
        if not result.variant
        else f"export of {result.variant['name']}"
    )
    created = logger.client.create_run(logger.experiment_id, run_name=name, tags=tags)
    run_id = created.info.run_id
    logger.client.log_artifacts(run_id, str(result.out_dir), "export")
    versions = {}
    for fmt, path in result.files.items():
        if fmt in ("labels", "model_card", "parity"):
            continue
        versions[fmt] = _register_file(logger, run_id, result, fmt, path)
    logger.client.set_terminated(run_id, "FINISHED")
    return versions


def _register_file(logger: StudyLogger, run_id: str, result: Any, fmt: str, path: Path) -> str:
    """One exported format as a model version whose source is its file in the export run's artifacts."""
    from mlflow.exceptions import MlflowException

    from autotl.backbones.weights import sha256_file

    name = f"{logger.model_name}-{fmt.replace('_', '-')}"
    with contextlib.suppress(MlflowException):  # it exists already
        logger.client.create_registered_model(name)
    source = f"runs:/{run_id}/export/{path.relative_to(result.out_dir)}"
    parity = (result.parity.get("formats") or {}).get(fmt) or {}
    file = path / "saved_model.pb" if path.is_dir() else path
    tags = {
        SHA_TAG: sha256_file(file),
        "autotl.trial_number": str(result.trial),
        "autotl.format": fmt,
        **flat("autotl.parity", {k: v for k, v in parity.items() if k != "tolerance"}),
    }
    version = logger.client.create_model_version(name, source, run_id=run_id, tags=tags)
    return str(version.version)
