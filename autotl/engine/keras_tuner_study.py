"""The keras-tuner engine's trials as an Optuna study, beside the Optuna engine's, for ``autotl report`` to compare.

:func:`autotl.engine.keras_tuner.run_keras_tuner_search` adds every finished keras-tuner
trial to the study ``<study_name>-keras-tuner`` in the run folder's storage, with
the parameters, distributions and trial attributes an Optuna trial of the same
space has.  This module imports Optuna, not keras-tuner or TensorFlow.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.engine.space import Distributions, SearchSpace, trial_params
from autotl.scoring.objective import Objectives

if TYPE_CHECKING:
    from autotl.data.dataset import Dataset

__all__ = ["KerasTunerStudy", "TRIAL_ID_ATTR"]

#: The user attribute that names a trial's keras-tuner trial id in the Optuna copy of the search.
TRIAL_ID_ATTR = "keras_tuner_trial_id"


class KerasTunerStudy:
    """The keras-tuner trials as a study in the run folder's Optuna storage, for ``autotl report`` to compare engines.

    One study per run (``<study_name>-keras-tuner``), one Optuna trial per finished
    keras-tuner trial, added once: a trial's keras-tuner id is kept as the user
    attribute ``keras_tuner_trial_id`` and ids already there are skipped.
    """

    STATES = ("COMPLETE", "FAIL", "PRUNED")  # finished; a RUNNING trial is added once it ends

    def __init__(
        self,
        storage_url: str,
        study_name: str,
        space: SearchSpace,
        dataset: Dataset,
        tuner: str,
        best_model: str,
    ) -> None:
        from autotl.run.lineage import library_versions
        from autotl.run.storage import open_study

        self.url = storage_url
        self.objectives = Objectives.of(space.objectives)
        # a bad --storage fails before any trial
        self.study = open_study(storage_url, study_name, directions=self.objectives.directions)
        asked = Distributions()
        trial_params(asked, space)
        self.distributions = asked.distributions
        self.phase1_epochs = space.phase1.epochs
        self.data = dataset.summary()
        attrs = {
            "engine": "keras-tuner",
            "tuner": tuner,
            "data": self.data,
            "class_names": list(dataset.class_names),
            "space": space.model_dump(),
            "best_model": best_model,
            "versions": library_versions(),
            "objectives": self.objectives.names,
            "sampler": f"keras-tuner {tuner}",
        }
        for key, value in attrs.items():
            if self.study.user_attrs.get(key) != json.loads(json.dumps(value)):
                self.study.set_user_attr(key, value)

    def add(self, records: Sequence[dict[str, Any]]) -> int:
        """Add the finished trials of ``records`` not yet in the study; return how many were added."""
        seen = {t.user_attrs.get(TRIAL_ID_ATTR) for t in self.study.get_trials(deepcopy=False)}
        added = 0
        for r in records:
            if r["state"] in self.STATES and r["trial_id"] not in seen:
                self.study.add_trial(self._frozen(r))
                seen.add(r["trial_id"])
                added += 1
        return added

    def _frozen(self, r: dict[str, Any]) -> Any:
        import optuna

        from autotl.scoring.objective import trial_metrics

        state = optuna.trial.TrialState[r["state"]]
        try:
            values = (
                self.objectives.values(trial_metrics(r))
                if state != optuna.trial.TrialState.FAIL
                else None
            )
        except KeyError:
            values = None
        if state == optuna.trial.TrialState.COMPLETE and values is None:
            state = optuna.trial.TrialState.FAIL
        params = {k: self._inside(k, v) for k, v in r["params"].items() if k in self.distributions}
        attrs = {**r.get("user_attrs", {}), TRIAL_ID_ATTR: r["trial_id"], "engine": "keras-tuner"}
        attrs.update({k: r[k] for k in ("hyperband", "budget") if r.get(k)})
        if state == optuna.trial.TrialState.FAIL:
            attrs.setdefault("fail_reason", r.get("message") or "failed in keras-tuner")
        trial = optuna.trial.create_trial(
            state=state,
            values=values,
            params=params,
            distributions={k: self.distributions[k] for k in params},
            user_attrs=json.loads(json.dumps(attrs, default=str)),
            intermediate_values=self._steps(r),
        )
        started, seconds = attrs.get("started"), attrs.get("seconds_total")
        if isinstance(started, (int, float)) and isinstance(
            seconds, (int, float)
        ):  # when it ran, not when it was copied
            trial.datetime_start = _dt.datetime.fromtimestamp(started)
            trial.datetime_complete = trial.datetime_start + _dt.timedelta(seconds=seconds)
        return trial

    def _inside(self, name: str, value: Any) -> Any:
        """keras-tuner's value in the Optuna distribution (log sampling may overshoot a bound by a rounding error)."""
        d = self.distributions[name]
        if hasattr(d, "low") and isinstance(value, (int, float)):
            return min(max(value, d.low), d.high)
        return value

    def _steps(self, r: dict[str, Any]) -> dict[int, float]:
        """Validation accuracy per epoch on the Optuna engine's step axis: phase 1 from 0, phase 2 from phase 1's epoch cap."""
        history = (r.get("user_attrs") or {}).get("history") or {}
        offset = (r.get("trial_params") or {}).get("phase1_epochs") or self.phase1_epochs
        steps = {}
        for start, phase in ((0, "phase1"), (offset, "phase2")):
            for i, v in enumerate((history.get(phase) or {}).get("val_accuracy") or []):
                if isinstance(v, (int, float)) and math.isfinite(v):
                    steps[start + i] = float(v)
        return steps

    def record_best(self, model_file: Optional[Path], number: Optional[int]) -> None:
        """Lineage of the best model file (``autotl lineage keras_tuner/best_model.keras``); never fails the search."""
        if model_file is None or number is None:
            return
        try:
            from autotl.run.lineage import record_model

            trial = next(
                t
                for t in self.study.get_trials(deepcopy=False)
                if str(t.user_attrs.get(TRIAL_ID_ATTR)) == str(number)
            )
            record_model(
                self.url, self.study.study_name, trial, model_file, "best_model", data=self.data
            )
        except Exception as exc:
            warnings.warn(f"lineage not recorded for {model_file}: {exc}", stacklevel=2)
