"""autotl's two-phase transfer learning as a keras-tuner ``HyperModel``.

keras-tuner tunes a model that ``build(hp)`` returns and ``fit`` trains in one
``model.fit`` call; a transfer-learning model needs two phases with a gate
between them, which keras-tuner users otherwise write by hand in
``run_trial``.  :class:`TransferHyperModel` does it with autotl's plugins, its
feature cache and its trainer (:func:`autotl.training.trainer.train_trial`), so phase 1
always comes first, phase 2 runs only once the head has stabilised, and the
fine-tuning rate stays at least 10 times below phase 1's::

    import keras_tuner as kt
    from autotl.engine.keras_tuner import TransferHyperModel

    hypermodel = TransferHyperModel(space, dataset, weights=WeightsSource.parse(weights_dir="weights"), cache_dir="cache")
    tuner = kt.BayesianOptimization(hypermodel, objective=hypermodel.objective, max_trials=20, directory="kt")
    tuner.search()                     # no data arguments: the data set is the hypermodel's
    best = tuner.get_best_models(1)[0]  # raw pixels of any size in, class probabilities out

:func:`run_keras_tuner_search` runs a search space through keras-tuner the way
``autotl search`` runs it through Optuna, resumable, and returns leaderboard
rows shaped like the Optuna study's.  It also records every finished trial
in the run folder's Optuna storage, as the study ``<study_name>-keras-tuner``
beside the Optuna engine's ``<study_name>``, with the same parameters,
distributions and trial attributes, so ``autotl report`` compares the two
engines in one report.  Importing this module imports keras-tuner, and with
it TensorFlow: import it where it is used.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import keras_tuner

from autotl.backbones.registry import Registry
from autotl.backbones.weights import WeightsSource, resolve_weights
from autotl.engine.keras_tuner_study import TRIAL_ID_ATTR, KerasTunerStudy
from autotl.engine.options import choices
from autotl.engine.space import SearchSpace, errors_line, trial_params
from autotl.errors import AutotlError, TrialFailed, UsageError, failure_line
from autotl.run.folder import KERAS_TUNER, RunFolder
from autotl.scoring.objective import Objectives
from autotl.training.model import HEAD_LAYERS
from autotl.training.trainer import TrialParams, train_trial

if TYPE_CHECKING:
    from autotl.data.dataset import Dataset
    from autotl.spec import BackboneSpec

__all__ = ["TransferHyperModel", "run_keras_tuner_search", "TUNERS", "TRIAL_ID_ATTR"]

#: The tuners :func:`run_keras_tuner_search` knows.
TUNERS = choices("tuner")
PROJECT = "autotl"
RECORD_FILE = "autotl.json"  # per trial, in keras-tuner's trial folder: what the trainer did
# keras-tuner's TrialStatus to the Optuna state names the Optuna leaderboard shows.
_STATES = {
    "COMPLETED": "COMPLETE",
    "FAILED": "FAIL",
    "INVALID": "FAIL",
    "RUNNING": "RUNNING",
    "IDLE": "WAITING",
    "STOPPED": "PRUNED",
}
#: Per process, a base's pretrained weights by (backbone, plugin, weights argument, weights sha256, seed):
#: what a resumed Hyperband trial puts back into the base keras-tuner loaded a checkpoint into.
_PRISTINE: dict[tuple[Any, ...], list[Any]] = {}


def _pristine_key(spec: BackboneSpec, resolved: Any, seed: int) -> tuple[Any, ...]:
    return (spec.name, spec.plugin, resolved.argument, resolved.sha256, seed)


class _Suggest:
    """``autotl.engine.space.trial_params`` asks an Optuna-like trial; this one declares keras-tuner hyperparameters.

    One mapping from a space to ``TrialParams`` for both engines.  A degenerate
    range (low == high) becomes ``hp.Fixed``: keras-tuner's Bayesian oracle
    divides by the width of a range.
    """

    def __init__(self, hp: Any) -> None:
        self.hp = hp

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.hp.Choice(name, list(choices))

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        if low == high:
            return self.hp.Fixed(name, float(low))
        return self.hp.Float(name, low, high, sampling="log" if log else "linear")

    def suggest_int(self, name: str, low: int, high: int) -> int:
        if low == high:
            return self.hp.Fixed(name, int(low))
        return self.hp.Int(name, low, high)


def _tuner_of(callbacks: Sequence[Any]) -> tuple[Any, Any]:
    """The tuner and trial behind keras-tuner's own ``TunerCallback``, if it is among ``callbacks``."""
    for cb in callbacks:
        if hasattr(cb, "tuner") and hasattr(cb, "trial"):
            return cb.tuner, cb.trial
    return None, None


def _is_keras_tuner_callback(cb: Any) -> bool:
    return type(cb).__module__.startswith("keras_tuner")


def _pristine(spec: BackboneSpec, resolved: Any, seed: int) -> list[Any]:
    """The pretrained base's weights (built once per backbone, weights and seed)."""
    from autotl.training.model import build_base

    key = _pristine_key(spec, resolved, seed)
    if key not in _PRISTINE:
        _PRISTINE[key] = build_base(spec, resolved, seed=seed).get_weights()
    return _PRISTINE[key]


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """The trial's record beside keras-tuner's own files, written whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)


def _checkpoint(callbacks: list[Any], model: Any, result: Any, metrics: dict[str, float]) -> None:
    """keras-tuner checkpoints the trial's model from its own callbacks' ``on_epoch_end``: one "epoch", the result."""
    history = result.history
    last = len(history["phase1"].get("loss", ())) + len(history["phase2"].get("loss", ())) - 1
    for cb in callbacks:
        if _is_keras_tuner_callback(cb):
            cb.set_model(model)
            cb.on_epoch_end(max(last, 0), logs=dict(metrics))


class TransferHyperModel(keras_tuner.HyperModel):
    """A keras-tuner ``HyperModel`` that trains autotl's two-phase transfer model.

    ``build(hp)`` declares the space's hyperparameters (``backbone`` and
    ``head_width`` as ``hp.Choice``, ``dropout`` as ``hp.Float``,
    ``unfreeze_blocks`` as ``hp.Int``, ``finetune_lr`` as ``hp.Float`` with the
    space's log sampling; a fixed value as ``hp.Fixed``) and returns the full
    model: raw pixels of any size in, class probabilities out, with the chosen
    backbone's pretrained weights.  ``fit(hp, model)`` trains it with
    :func:`autotl.training.trainer.train_trial` on the frozen-feature cache and puts the
    trained head (and, when fine-tuning was kept, the trained top blocks) into
    ``model`` itself, so the checkpoint keras-tuner writes from it, and the
    model ``tuner.get_best_models()`` reloads, is the model that scored.
    It returns the metrics the trainer recorded (``val_accuracy``,
    ``val_loss``): pass ``objective=hypermodel.objective`` to the tuner (the
    space's first objective, e.g. ``val_accuracy`` to maximise).

    The rules hold whatever the tuner samples: the space is validated again
    here (a space changed with ``model_copy(update=...)`` skips pydantic's
    checks), and a hyperparameter value that breaks the learning-rate rule
    (say, one fixed through the tuner's ``hyperparameters=``) stops the search
    with ``keras_tuner.errors.FatalValueError``.  A trial that diverges is
    marked failed (``FailedTrialError``) and the search goes on.

    Epoch budgets: without ``epochs``, the space's ``phase1.epochs`` and
    ``phase2.epochs`` are used (both are caps; early stopping ends a phase
    sooner).  Hyperband passes ``epochs`` (its rung's budget, up to its
    ``max_epochs``): each phase then gets the same fraction of its own cap,
    ``ceil(space epochs * epochs / max_epochs)`` (phase 1 at least 1), so the
    top rung trains exactly as the space says and low rungs cheaply compare
    heads (a head cut short of its plateau does not open the gate).
    ``max_epochs`` is the argument given here, else read from a Hyperband
    tuner's oracle.  ``epochs`` without any ``max_epochs`` (say
    ``RandomSearch.search(epochs=5)``) caps each phase at ``epochs``.
    ``initial_epoch`` is ignored: a promoted Hyperband trial retrains from
    scratch with its larger budget rather than continuing the checkpoint
    keras-tuner loaded into the model, because early stopping with restored
    best weights and the gate cannot resume mid-way; on cached features that
    costs seconds.

    Interrupted trials: keras-tuner restarts an interrupted trial from scratch
    when the search is run again (``overwrite=False``).  The activations the
    trial's base computed are already in the feature cache (``cache_dir``),
    so the restart trains the head on them at once instead of running the
    backbone over the data again: the restart is cheap.

    Arguments that ``tuner.search(...)`` passes on (``x``, ``validation_data``,
    ...) are ignored with a warning: the data set is ``dataset``, already
    split.  Of the callbacks only keras-tuner's own run (the checkpoint of the
    trial's model); the trainer has its own early stopping.

    Args:
        space: the search space (``autotl.engine.space.load_space``).
        dataset: an ``autotl.data.dataset.Dataset`` (``load_folder`` / ``from_arrays``).
        registry: the backbones (default: ``autotl.backbones.registry.get_registry()``).
        weights: where pretrained weights come from (default: ``WeightsSource.parse()``,
            i.e. ``$AUTOTL_WEIGHTS_DIR``, else ImageNet downloads).
        cache_dir: the feature cache (default: ``$XDG_CACHE_HOME/autotl/features``);
            share it between searches on the same data to share activations.
        max_epochs: Hyperband's ``max_epochs``, see above (default: read from the tuner).
    """

    @property
    def objective(self) -> Any:
        """The keras-tuner ``Objective`` of the space's first objective (``val_accuracy``, maximised, by default)."""
        primary = Objectives.of(self.space.objectives).primary
        return keras_tuner.Objective(
            primary.metric, direction="max" if primary.direction == "maximize" else "min"
        )

    def __init__(
        self,
        space: SearchSpace,
        dataset: Dataset,
        registry: Optional[Registry] = None,
        weights: Optional[WeightsSource] = None,
        cache_dir: Optional[str | os.PathLike[str]] = None,
        *,
        max_epochs: Optional[int] = None,
        name: str = "autotl_transfer",
    ) -> None:
        from pydantic import ValidationError

        from autotl.backbones.registry import get_registry
        from autotl.training.cache import FeatureCache

        super().__init__(name=name, tunable=True)
        try:  # again: model_copy(update=...) and model_construct skip validation
            self.space = SearchSpace.model_validate(
                space.model_dump() if isinstance(space, SearchSpace) else space
            )
        except ValidationError as exc:
            raise UsageError(f"search space: {errors_line(exc)}") from None
        self.dataset = dataset
        self.registry = registry if registry is not None else get_registry()
        self.weights = weights if weights is not None else WeightsSource.parse()
        for backbone in self.space.backbones:  # fail now, not in trial 17
            resolve_weights(self.registry.backbone(backbone), self.weights)
        if cache_dir is None:
            cache_dir = (
                Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "autotl"
                / "features"
            )
        self.cache = FeatureCache(cache_dir)
        self.max_epochs = max_epochs
        #: trial id (or ``None`` outside a tuner) to the record written for it; see :meth:`fit`.
        self.records: dict[Optional[str], dict[str, Any]] = {}
        self._warned = False

    # -- hyperparameters ------------------------------------------------------------------------

    def params(self, hp: Any) -> TrialParams:
        """Declare (or read) the space's hyperparameters in ``hp`` and map them to ``TrialParams``."""
        try:
            return trial_params(_Suggest(hp), self.space)
        except ValueError as exc:  # TrialParams: the learning-rate rule
            raise keras_tuner.errors.FatalValueError(
                f"hyperparameters {dict(hp.values)} break a rule: {exc}"
            ) from None

    # -- keras-tuner's two calls ----------------------------------------------------------------

    def build(self, hp: Any) -> Any:
        """The full model of ``hp``'s backbone and head, with the backbone's pretrained weights."""
        from autotl.training.model import assemble, build_base, build_head

        params = self.params(hp)
        spec = self._spec(params.backbone)
        try:
            resolved = resolve_weights(spec, self.weights)
            base = build_base(spec, resolved, seed=params.seed)
        except UsageError as exc:
            raise keras_tuner.errors.FatalValueError(str(exc)) from exc
        except TrialFailed as exc:
            raise keras_tuner.errors.FailedTrialError(str(exc)) from exc
        key = _pristine_key(spec, resolved, params.seed)
        if (
            "tuner/trial_id" in hp.values and key not in _PRISTINE
        ):  # Hyperband loads a checkpoint over them next: see fit
            _PRISTINE[key] = base.get_weights()
        return assemble(
            spec, base, build_head(len(self.dataset.class_names), params.head_width, params.dropout)
        )

    def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Train ``model`` (from :meth:`build`) in two phases; return its validation accuracy and loss."""
        callbacks = list(kwargs.pop("callbacks", None) or [])
        epochs = kwargs.pop("epochs", None)
        kwargs.pop("initial_epoch", None)
        kwargs.pop("verbose", None)
        self._warn_ignored(args, kwargs, callbacks)
        tuner, trial = _tuner_of(callbacks)
        params = self._budget(self.params(hp), epochs, tuner)
        spec = self._spec(params.backbone)
        resolved = resolve_weights(spec, self.weights)
        base = self._base_of(model)
        if "tuner/trial_id" in hp.values:
            # Hyperband loaded an earlier trial's checkpoint into the model: the trainer needs the
            # pretrained base (the cache is keyed by it, and its top is fine-tuned from it).
            base.set_weights(_pristine(spec, resolved, params.seed))
        start, started = time.perf_counter(), time.time()
        result = self._train(spec, params, base, resolved)
        self._load_trained(model, base, result.trained_weights())
        metrics = {k: float(v) for k, v in result.attrs()["metrics"].items()}
        trial_id: Optional[str] = trial.trial_id if trial is not None else None
        record = {
            "trial_id": trial_id,
            "params": {k: v for k, v in hp.values.items() if not k.startswith("tuner/")},
            "trial_params": asdict(params),
            "budget": {
                "epochs": epochs,
                "max_epochs": self._max_epochs(tuner),
                "phase1_epochs": params.phase1_epochs,
                "phase2_epochs": params.phase2_epochs,
            },
            "user_attrs": {
                **result.attrs(),
                "seconds_total": time.perf_counter() - start,
                "weights_origin": resolved.origin,
                "weights_sha256": resolved.sha256,
                "plugin": spec.plugin,
                "started": started,
            },
        }
        self.records[trial_id] = record
        if tuner is not None:
            _write_record(Path(tuner.get_trial_dir(trial.trial_id)) / RECORD_FILE, record)
        _checkpoint(callbacks, model, result, metrics)
        return metrics

    def _warn_ignored(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], callbacks: list[Any]
    ) -> None:
        """Once: what ``tuner.search(...)`` passed on that the trainer does not use (data, other callbacks)."""
        ignored = [cb for cb in callbacks if not _is_keras_tuner_callback(cb)]
        if not (args or kwargs or ignored) or self._warned:
            return
        self._warned = True
        what = (
            [f"{len(args)} positional argument(s)"] * bool(args)
            + sorted(kwargs)
            + [type(cb).__name__ for cb in ignored]
        )
        warnings.warn(
            f"TransferHyperModel.fit ignores {', '.join(what)}: it trains on its own data set with autotl's "
            f"two-phase trainer; call tuner.search() without data arguments",
            stacklevel=3,
        )

    def _train(self, spec: BackboneSpec, params: TrialParams, base: Any, resolved: Any) -> Any:
        """One trial through the trainer; its failures as keras-tuner's (a failed trial, or a fatal one)."""
        try:
            return train_trial(
                spec,
                params,
                lambda: base,
                self.dataset,
                self.cache,
                resolved,
                augmentation=self.space.augmentation,
            )
        except TrialFailed as exc:
            raise keras_tuner.errors.FailedTrialError(str(exc)) from exc
        except AutotlError as exc:
            raise keras_tuner.errors.FatalValueError(str(exc)) from exc
        except (
            Exception
        ) as exc:  # whatever a plugin or a library raises: this trial fails, with its reason
            raise keras_tuner.errors.FailedTrialError(failure_line(exc)) from exc

    # -- helpers --------------------------------------------------------------------------------

    def _spec(self, name: str) -> Any:
        try:
            return self.registry.backbone(name)
        except UsageError as exc:
            raise keras_tuner.errors.FatalValueError(str(exc)) from exc

    def _max_epochs(self, tuner: Any) -> Optional[int]:
        return self.max_epochs or getattr(getattr(tuner, "oracle", None), "max_epochs", None)

    def _budget(self, params: TrialParams, epochs: Optional[int], tuner: Any) -> TrialParams:
        """The phases' epoch caps for a tuner-given budget of ``epochs`` (see the class doc)."""
        if epochs is None:
            return params
        epochs = int(epochs)
        max_epochs = self._max_epochs(tuner)
        p1, p2 = self.space.phase1.epochs, self.space.phase2.epochs
        if max_epochs:
            share = min(1.0, epochs / max_epochs)
            return replace(
                params,
                phase1_epochs=max(1, math.ceil(p1 * share - 1e-9)),
                phase2_epochs=math.ceil(p2 * share - 1e-9),
            )
        return replace(params, phase1_epochs=max(1, min(p1, epochs)), phase2_epochs=min(p2, epochs))

    @staticmethod
    def _base_of(model: Any) -> Any:
        import keras

        bases = [layer for layer in model.layers if isinstance(layer, keras.Model)]
        if len(bases) != 1:
            raise keras_tuner.errors.FatalTypeError(
                f"TransferHyperModel.fit needs the model TransferHyperModel.build returned (one nested base), got {model.name!r}"
            )
        return bases[0]

    @staticmethod
    def _load_trained(model: Any, base: Any, weights: dict[str, list[Any]]) -> None:
        """Put the layers the trial trained into ``model``: the head by its names, the rest inside the base."""
        for name, values in weights.items():
            (model if name in HEAD_LAYERS else base).get_layer(name).set_weights(values)


# -- the search, as `autotl search --engine keras-tuner` runs it ----------------------------------


def _make_tuner(
    kind: str, hypermodel: TransferHyperModel, folder: Path, trials: int, budget: tuple[int, int]
) -> Any:
    """keras-tuner's tuner ``kind`` over ``folder``, resumed if it is there, seeded by the space;
    ``budget`` is Hyperband's ``(max_epochs, factor)``."""
    common = {
        "objective": hypermodel.objective,
        "directory": str(folder),
        "project_name": PROJECT,
        "overwrite": False,
        "seed": hypermodel.space.seed,
    }
    if kind == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=trials, **common)
    # Hyperband counts no trials by itself: as many iterations as needed, stopped at `trials` (promotions count).
    max_epochs, factor = budget
    tuner = keras_tuner.Hyperband(
        hypermodel, max_epochs=max_epochs, factor=factor, hyperband_iterations=None, **common
    )
    tuner.oracle.max_trials = trials
    return tuner


def _records(tuner: Any) -> list[dict[str, Any]]:
    """One row per trial, in trial order, shaped like the Optuna leaderboard's: ``number``,
    ``params`` (backbone, head_width, dropout, unfreeze_blocks, finetune_lr), ``val_accuracy``,
    ``val_loss``, ``state`` (``COMPLETE``, ``FAIL``, ``RUNNING``), and ``user_attrs`` (the trainer's
    gate, history, head_stable_epoch, seconds_total, ...), plus ``trial_id``, ``hyperband``
    (keras-tuner's ``tuner/*`` values), ``trial_params`` (every ``TrialParams`` field the trial ran
    with), ``budget`` and, for a failed trial, ``message``."""
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items(), key=lambda kv: int(kv[0])):
        values = dict(trial.hyperparameters.values)
        extra_file = Path(tuner.get_trial_dir(trial_id)) / RECORD_FILE
        extra = json.loads(extra_file.read_text()) if extra_file.is_file() else {}

        def metric(name: str, trial: Any = trial) -> Optional[float]:
            return float(trial.metrics.get_last_value(name)) if trial.metrics.exists(name) else None

        state = _STATES.get(str(trial.status), str(trial.status))
        user_attrs = extra.get("user_attrs", {})
        if (
            state == "COMPLETE" and "metrics" not in user_attrs
        ):  # a trial that wrote no record: keras-tuner's own metrics
            user_attrs["metrics"] = {
                k: metric(k) for k in ("val_accuracy", "val_loss") if metric(k) is not None
            }
        rows.append(
            {
                "number": int(trial_id),
                "params": {k: v for k, v in values.items() if not k.startswith("tuner/")},
                "val_accuracy": metric("val_accuracy") if state == "COMPLETE" else None,
                "val_loss": metric("val_loss") if state == "COMPLETE" else None,
                "state": state,
                "trial_id": trial_id,
                "hyperband": {
                    k.removeprefix("tuner/"): v for k, v in values.items() if k.startswith("tuner/")
                },
                "trial_params": extra.get("trial_params", {}),
                "budget": extra.get("budget", {}),
                "user_attrs": user_attrs,
                "message": ((trial.message or "").strip().splitlines() or [None])[-1]
                if state == "FAIL"
                else None,
            }
        )
    return rows


def _save_best(
    tuner: Any, run: RunFolder, records: list[dict[str, Any]], objectives: Objectives
) -> Optional[Path]:
    """The engine's ``best_model.keras``: the best trial by autotl's order (keras-tuner breaks ties its own way)."""
    top = objectives.best([r for r in records if r["state"] == "COMPLETE"])
    if top is None:
        return None
    if run.best_trial_number(KERAS_TUNER) == top["number"]:
        return run.best_model(KERAS_TUNER)
    best = tuner.oracle.get_trial(top["trial_id"])
    tmp = run.engine_dir(KERAS_TUNER) / f".best.tmp{os.getpid()}.keras"
    tuner.load_model(best).save(tmp)
    try:
        return run.install_best(
            tmp, top["number"], top["params"], KERAS_TUNER, trial_id=best.trial_id, value=best.score
        )
    finally:
        tmp.unlink(missing_ok=True)


def _search_error(exc: BaseException, folder: Path) -> BaseException:
    """keras-tuner's way of stopping a search, as the one-line error autotl raises for it (or ``exc`` itself)."""
    if isinstance(exc, keras_tuner.errors.FatalError):
        if isinstance(exc.__cause__, AutotlError):
            return exc.__cause__
        return UsageError(f"keras-tuner stopped the search: {exc}")
    if isinstance(exc, RuntimeError) and "consecutive failures" in str(exc):
        last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
        return UsageError(
            f"keras-tuner stopped the search after {str(exc).splitlines()[0].lower()} (last: {last}); see the trials in {folder}"
        )
    return exc


def run_keras_tuner_search(
    space: SearchSpace,
    dataset: Dataset,
    registry: Optional[Registry],
    weights: Optional[WeightsSource],
    out: Path,
    trials: int,
    tuner: str = "bayesian",
    *,
    max_epochs: int = 9,
    factor: int = 3,
    verbose: int = 0,
    storage_url: Optional[str] = None,
    study_name: str = "autotl",
) -> list[dict[str, Any]]:
    """Run (or resume) ``space`` through a keras-tuner tuner until it holds ``trials`` trials.

    The project lives in ``out / "keras_tuner"`` with ``overwrite=False``:
    rerunning resumes, finished trials are kept, an interrupted one is rerun
    (cheaply, from the feature cache in ``out / "cache"``, which an Optuna
    search in the same run folder shares), and only the missing trials run.
    ``trials`` counts every trial keras-tuner started, failed ones included;
    for ``hyperband`` it caps the brackets (``max_epochs``, ``factor``), and a
    promotion to a higher rung is a trial of its own.  The best model is
    saved as ``out / "keras_tuner" / "best_model.keras"`` with
    ``classes.json`` beside it (``autotl predict out/keras_tuner IMAGE``).

    Returns one row per trial, in trial order, shaped like the Optuna
    leaderboard's (``number``, ``params``, ``val_accuracy``, ``val_loss``,
    ``state``, ``user_attrs``, and keras-tuner's own: see :func:`_records`).
    Every finished trial is also added, once, to the study
    ``<study_name>-keras-tuner`` in ``storage_url`` (see :func:`_study_copy`).
    """
    if tuner not in TUNERS:
        raise UsageError(f"unknown keras-tuner tuner {tuner!r}; use one of: {', '.join(TUNERS)}")
    if trials < 1:
        raise UsageError(f"trials must be at least 1, got {trials}")
    run = RunFolder(out)
    folder = run.engine_dir(KERAS_TUNER)
    hypermodel = TransferHyperModel(
        space,
        dataset,
        registry,
        weights,
        run.cache_dir,
        max_epochs=max_epochs if tuner == "hyperband" else None,
    )
    _claim(run, hypermodel, tuner)
    copy = _study_copy(run, hypermodel, tuner, storage_url, study_name)
    budget = (max_epochs, factor)
    kt = _search(
        lambda: _make_tuner(tuner, hypermodel, folder, trials, budget), copy, folder, verbose
    )
    records = _records(kt)
    copy.add(records)
    best = _save_best(kt, run, records, Objectives.of(hypermodel.space.objectives))
    copy.record_best(best, run.best_trial_number(KERAS_TUNER))
    return records


def _study_copy(
    run: RunFolder,
    hypermodel: TransferHyperModel,
    tuner: str,
    storage_url: Optional[str],
    study_name: str,
) -> KerasTunerStudy:
    """The Optuna study ``<study_name>-keras-tuner`` in ``storage_url`` (default: the run folder's
    ``study.db``, where ``autotl search`` keeps its Optuna study ``<study_name>``) that mirrors the
    search: the space's Optuna distributions, the value ``val_accuracy``, and the trainer's
    attributes under the keys the Optuna engine's trials use, plus ``keras_tuner_trial_id``.  A
    resumed search adds only the trials not yet there."""
    return KerasTunerStudy(
        run.storage_url(storage_url),
        RunFolder.study_name(study_name, KERAS_TUNER),
        hypermodel.space,
        hypermodel.dataset,
        tuner,
        run.relative(run.best_model(KERAS_TUNER)),
    )


def _claim(run: RunFolder, hypermodel: TransferHyperModel, tuner: str) -> None:
    """Tie the run folder to the data, and to this tuner and space (a resume must bring the same)."""
    space = hypermodel.space.model_dump()
    run.claim(
        hypermodel.dataset,
        {"space": space, "weights": hypermodel.weights.describe()},
        engine=KERAS_TUNER,
        must_match={"tuner": tuner, "space": {k: v for k, v in space.items() if k != "trials"}},
    )


def _search(make: Callable[[], Any], copy: KerasTunerStudy, folder: Path, verbose: int) -> Any:
    """The tuner ``make()`` gives, after its search; when the search stops early, the trials that
    finished are kept and keras-tuner's error is said in one line."""
    kt = None
    debug = keras_tuner.src.config.DEBUG
    keras_tuner.src.config.DEBUG = (
        False  # a failed trial is recorded with its reason, not a traceback
    )
    try:
        kt = make()
        kt.search(verbose=verbose)
    except BaseException as exc:
        if (
            kt is not None
        ):  # keep the trials that finished; the search's own error is the one to tell
            with contextlib.suppress(Exception):
                copy.add(_records(kt))
        error = _search_error(exc, folder)
        if error is exc:
            raise
        raise error from None
    finally:
        keras_tuner.src.config.DEBUG = debug
    return kt
