"""The run's ensemble: the top trials' models combined by ensemble selection, and scored beside the best single model.

Cheap here, because the search already trained every head on cached features
and kept the best trials' layers.  The steps, each one function:

1. **candidates**: the top ``k`` complete trials (the study's "best first"
   order) whose layers the search kept, across backbones;
2. **predictions** (:mod:`autotl.ensemble.predictions`): each candidate's
   probabilities on the validation images, the test images when there are
   any, and their mirrors for flip TTA, computed once in batches and cached in
   the run folder as ``.npy``;
3. **selection**: greedy forward selection with replacement
   (:mod:`autotl.ensemble.caruana`) on the validation probabilities, maximising the
   study's first objective (ties broken by log loss);
4. **scores**: the best single model, the ensemble and each with flip TTA, on
   validation and on test, with 95% Wilson intervals;
5. **models** (on demand): each variant as one ``.keras`` file
   (:mod:`autotl.ensemble.model`), which export and latency use;
6. ``ensemble/selection.json``, which ``autotl export --ensemble`` and the
   report read.

Without a test split, every score is on the validation images that chose the
trials, their epochs and the ensemble: optimistic, and labelled so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from autotl.engine.refit import Refit
from autotl.ensemble import caruana
from autotl.ensemble.model import check_tta
from autotl.ensemble.predictions import Probs, Sizes, input_sizes, largest, predictions, split_key
from autotl.ensemble.record import (
    BEST,
    ENSEMBLE,
    EnsembleSelection,
    Score,
    Variant,
    load_selection,
    save_selection,
    variant_name,
)
from autotl.errors import UsageError
from autotl.run.folder import RunFolder
from autotl.run.trial_models import trial_model
from autotl.scoring.metrics import accuracy, log_loss
from autotl.scoring.objective import Objectives, ranked_trials

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import Dataset

__all__ = [
    "DEFAULT_TOP_K",
    "mix",
    "build_model",
    "current_selection",
    "save_selection",
    "space_top_k",
    "variant_name",
    "trial_variant",
    "member_scores",
    "BEST",
    "ENSEMBLE",
    "Score",
    "Variant",
    "EnsembleSelection",
    "candidates",
    "refit_missing",
    "select_ensemble",
    "load_selection",
    "variant_model",
]

DEFAULT_TOP_K = 8
#: What ensemble selection can maximise, by the metric an objective records: computed from probabilities.
SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "val_accuracy": accuracy,
    "val_loss": lambda p, y: -log_loss(p, y),
}
Say = Callable[[str], None]
Measure = Callable[[Path], dict[str, Any]]


@dataclass
class _Models:
    """Where the candidates' ``.keras`` files come from: the run and its study, and what assembles a
    trial's model where the search's files are not at hand (the plugins' ``registry``, ``weights``)."""

    run: RunFolder
    study: Study
    registry: Optional[Registry]
    weights: Optional[WeightsSource]
    plugins: tuple[str, ...]
    say: Say

    def model(self, trial: FrozenTrial) -> Path:
        """Trial ``trial``'s ``.keras`` file, assembled from its stored layers if needed."""
        return trial_model(
            self.run,
            self.study,
            trial,
            self.registry,
            self.weights,
            plugins=self.plugins,
            say=self.say,
        )

    def plugin_registry(self) -> Registry:
        """The plugins' registry (loaded from ``plugins`` once, when none was given)."""
        if self.registry is None:
            from autotl.backbones.registry import get_registry

            self.registry = get_registry(list(self.plugins))
        return self.registry

    def files(self, trials: Sequence[Any]) -> dict[int, Callable[[], Path]]:
        """Each trial's ``.keras`` file, assembled only when first asked for."""
        return {t.number: functools.partial(self.model, t) for t in trials}


# -- 1. candidates


def _has_model(run: RunFolder, trial: FrozenTrial) -> bool:
    return (
        run.trial_layers(trial) is not None
        or run.trial_model(trial.number).is_file()
        or run.best_trial_number() == trial.number
    )


def candidates(run: RunFolder, study: Study, k: int) -> tuple[list[Any], list[str]]:
    """The top ``k`` complete trials, best first, and notes; those whose layers were not kept are
    refitted when the ensemble needs them (:func:`refit_missing`)."""
    if k < 2:
        raise UsageError(f"an ensemble needs top_k of at least 2, got {k}")
    top = ranked_trials(study)[:k]
    if len(top) < 2:
        raise UsageError(
            f"an ensemble needs at least 2 complete trials, but {run.path} has {len(top)}"
        )
    notes: list[str] = []
    if len(top) < k:
        notes.append(f"the study has {len(top)} complete trials, fewer than top_k {k}")
    return top, notes


def refit_missing(
    models: _Models, trials: Sequence[FrozenTrial], dataset: Dataset
) -> tuple[list[FrozenTrial], dict[int, Refit]]:
    """``trials`` with a model: kept by the search, refitted earlier, or refitted now from the feature
    cache (:mod:`autotl.engine.refit`); a refit that does not reproduce its trial's record is left out.
    Returns the usable trials, in order, and every refit by trial number."""
    from autotl.engine.refit import Bases, refit_trial, stored_refit

    usable: list[FrozenTrial] = []
    refits: dict[int, Refit] = {}
    bases, run = Bases(), models.run
    for t in trials:
        refit = stored_refit(run, t.number)
        if refit is None and not _has_model(run, t):
            refit = refit_trial(
                run,
                models.study,
                t,
                dataset,
                registry=models.plugin_registry(),
                weights=models.weights,
                bases=bases,
                say=models.say,
            )
        if refit is not None:
            refits[t.number] = refit
        if refit is None or refit.passed:
            usable.append(t)
    if len(usable) < 2:
        raise UsageError(
            f"an ensemble needs at least 2 trials with a model among the top {len(trials)}, but only "
            f"{len(usable)} could be kept or refitted: "
            + "; ".join(r.line() for r in refits.values() if not r.passed)
        )
    return usable, refits


# -- 2 (predictions: autotl.ensemble.predictions), 3 and 4. selection and scores


def _scorer(study: Study) -> tuple[str, Callable[[np.ndarray, np.ndarray], float], list[str]]:
    """The metric selection maximises: the study's first objective when probabilities measure it, else accuracy."""
    primary = Objectives.of_study(study).primary
    if primary.metric in SCORERS:
        return primary.metric, SCORERS[primary.metric], []
    return (
        "val_accuracy",
        SCORERS["val_accuracy"],
        [
            f"selection maximised validation accuracy: the study's first objective ({primary.name}) "
            "is not measured from predicted probabilities"
        ],
    )


def mix(
    probs: dict[tuple[int, Optional[str]], np.ndarray],
    members: dict[int, float],
    tta: Optional[str],
) -> np.ndarray:
    """The members' weighted average, each member averaged over the image and its mirror with ``tta``."""
    views = [None, tta] if tta else [None]
    per_member = [np.mean([probs[(t, v)] for v in views], axis=0) for t in members]
    return caruana.combine(np.stack(per_member), list(members.values()))


@dataclass
class _Seen:
    """The candidates' probabilities on one set of images: each fed at its own size (``own``: what the trial
    alone predicts) and at the ensemble's size (``joint``: what it contributes inside the ensemble)."""

    own: Probs
    joint: Probs
    labels: np.ndarray


def _variants(
    members: dict[int, float], views: _Views, val: _Seen, test: Optional[_Seen]
) -> list[Variant]:
    """The best single model and the ensemble, each without and with every TTA, scored on val and test."""
    best = views.order[0]
    out = []
    for base, chosen, view, at in (
        (BEST, {best: 1.0}, "own", views.sizes[best]),
        (ENSEMBLE, members, "joint", views.size),
    ):
        for tta in views.ttas:
            on_val = Score.of(mix(getattr(val, view), chosen, tta), val.labels)
            on_test = (
                None
                if test is None
                else Score.of(mix(getattr(test, view), chosen, tta), test.labels)
            )
            name = variant_name(base, tta)
            out.append(Variant(name, dict(chosen), tta, on_val, on_test, input_size=at))
    return out


def _dataset(
    run: RunFolder,
    study: Study,
    data: Optional[str],
    plugins: Sequence[str],
    registry: Optional[Registry],
    dataset: Optional[Dataset] = None,
) -> Any:
    """The search's data again (or ``dataset``, already loaded); other data would not be the images the
    trials were scored on."""
    if dataset is not None:
        same = dataset.fingerprint == _fingerprint(run, study)
    else:
        dataset, same = run.reload_dataset(data, plugins, registry, study=study)
    if not same:
        raise UsageError(
            f"the data at {dataset.source} is not known to be the search's (its fingerprint differs or was not "
            "recorded); the ensemble is chosen on the search's validation images: pass its data with --data"
        )
    return dataset


def _fingerprint(run: RunFolder, study: Study) -> Optional[str]:
    """The fingerprint of the search's data, as the study or run.json recorded it."""
    recorded = (study.user_attrs.get("data") or {}).get("fingerprint")
    return recorded or run.record().get("data_fingerprint")


def select_ensemble(
    run: RunFolder,
    study: Study,
    *,
    k: int = DEFAULT_TOP_K,
    tta: Optional[str] = "flip",
    test: Any = None,
    test_source: Optional[str] = None,
    init: int = 1,
    bags: int = 0,
    max_steps: int = 50,
    data: Optional[str] = None,
    dataset: Optional[Dataset] = None,
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    plugins: Sequence[str] = (),
    measure: Optional[Measure] = None,
    say: Say = lambda _m: None,
) -> EnsembleSelection:
    """Choose the run's ensemble among its top ``k`` trials, score it beside the best single model, save it.

    ``test`` (an ``autotl.data.dataset.ImageSet`` labelled in the run's class order)
    defaults to the data set's test split (``dataset.test``) when it has one;
    without one, scores are on validation only.  ``measure(model_file)``, if
    given, times each variant (``autotl.export.tflite_latency``).  ``dataset``
    is the search's data set when the caller has already loaded it.
    """
    tta = check_tta(tta)
    settings = {"init": init, "bags": bags, "max_steps": max_steps}
    if init < 1 or bags < 0 or max_steps < 0:
        raise UsageError(
            f"init must be at least 1 and bags and max_steps at least 0, got init={init}, bags={bags}, "
            f"max_steps={max_steps}"
        )
    trials, notes = candidates(run, study, k)
    dataset = _dataset(run, study, data, plugins, registry, dataset)
    models = _Models(run, study, registry, weights, tuple(plugins), say)
    trials, refits = refit_missing(models, trials, dataset)
    notes += [r.line() for r in refits.values()]
    test, test_source = _test_split(dataset, test, test_source, notes)
    views = _Views(
        order=[t.number for t in trials],
        ttas=[None, tta] if tta else [None],
        sizes=input_sizes(trials, registry, plugins),
    )
    files = models.files(trials)
    val = _seen(models, files, dataset.val, "val", dataset, views)
    on_test = None if test is None else _seen(models, files, test, "test", dataset, views)
    selection = _select(study, views, (val, on_test), settings, k)
    selection.notes = notes + selection.notes + _refitted_members(selection.members, refits)
    selection.refits = {n: asdict(r) for n, r in refits.items()}
    selection.settings["tta"] = tta or "none"
    selection.data_fingerprint = dataset.fingerprint
    if test is not None:
        selection.test = {"source": test_source or "passed as test=", "images": len(test)}
    if measure is not None:
        _time(models, selection, measure)
    save_selection(run, selection)
    return selection


@dataclass
class _Views:
    """The candidates in order (best first), the TTA views scored, and each one's input size."""

    order: list[int]
    ttas: list[Optional[str]]
    sizes: Sizes

    @property
    def size(self) -> tuple[int, int]:
        """The ensemble's input size: the largest of its candidates'."""
        return largest(self.sizes)


def _test_split(
    dataset: Dataset, test: Any, test_source: Optional[str], notes: list[str]
) -> tuple[Any, Optional[str]]:
    """The test images the scores use: those given, else the data set's test split; none is noted."""
    if test is None and getattr(dataset, "test", None) is not None:
        test, test_source = dataset.test, test_source or "the data set's test split"
    if test is None:
        notes.append(
            "no test split: every score is on the validation images that also chose the trials and the "
            "ensemble, so all of them are optimistic"
        )
    return test, test_source


def _select(
    study: Study,
    views: _Views,
    seen: tuple[_Seen, Optional[_Seen]],
    settings: dict[str, int],
    top_k: int,
) -> EnsembleSelection:
    """Ensemble selection on the validation probabilities (:mod:`autotl.ensemble.caruana`), and every
    variant scored on ``seen`` (validation, and test if any); the caller fills in what it knows of the data."""
    (val, on_test), (metric, scorer, more) = seen, _scorer(study)
    order = views.order
    chosen = caruana.select(
        np.stack([val.joint[(t, None)] for t in order]), val.labels, scorer, **settings
    )
    members = {order[i]: chosen.weights[i] for i in chosen.members}
    return EnsembleSelection(
        top_k=top_k,
        candidates=order,
        members=members,
        counts={order[i]: chosen.counts[i] for i in chosen.members},
        objective=metric,
        variants=_variants(members, views, val, on_test),
        test=None,
        settings=dict(settings),
        steps=[{**s, "add": [order[i] for i in s["add"]]} for s in chosen.steps],
        notes=more,
        study_name=study.study_name,
        data_fingerprint=None,
        input_size=views.size,
    )


def _refitted_members(members: dict[int, float], refits: dict[int, Refit]) -> list[str]:
    """A note naming the ensemble's members that were refitted, and what their refits cost."""
    refitted = [n for n in members if n in refits and refits[n].passed]
    if not refitted:
        return []
    seconds = sum(refits[n].seconds for n in refitted if not refits[n].reused)
    return [
        f"ensemble members refitted from the feature cache: {', '.join(map(str, refitted))} "
        f"({seconds:.1f} s of refitting in this call)"
    ]


def _seen(
    models: _Models,
    files: dict[int, Callable[[], Path]],
    images: Any,
    name: str,
    dataset: Dataset,
    views: _Views,
) -> _Seen:
    """The candidates' probabilities on ``images`` (the validation or test images), cached: all at the
    ensemble's size, and the best trial at its own (the same files when the sizes are equal)."""
    run, study, best = models.run, models.study, views.order[0]
    n_classes = len(run.class_names(study))
    fingerprint = dataset.fingerprint if name == "val" else None
    key = split_key(name, images, study.study_name, fingerprint)
    joint = predictions(
        run,
        files,
        images,
        key,
        n_classes=n_classes,
        ttas=views.ttas,
        sizes=dict.fromkeys(files, views.size),
        say=models.say,
    )
    own = predictions(
        run,
        {best: files[best]},
        images,
        key,
        n_classes=n_classes,
        ttas=views.ttas,
        sizes={best: views.sizes[best]},
        say=models.say,
    )
    return _Seen(own, joint, np.asarray(images.labels))


def _time(models: _Models, selection: EnsembleSelection, measure: Measure) -> None:
    """Each variant's model built (if it is not a trial's own file) and timed by ``measure``."""
    run = models.run
    for v in selection.variants:
        path = variant_model(
            run,
            models.study,
            selection,
            v.name,
            registry=models.registry,
            weights=models.weights,
            plugins=models.plugins,
            say=models.say,
            save=False,
        )
        models.say(f"timing {v.name} ({run.relative(path)}) through TFLite")
        v.latency = measure(path)


# -- 5. models


def variant_model(
    run: RunFolder,
    study: Study,
    selection: EnsembleSelection,
    name: str,
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    plugins: Sequence[str] = (),
    say: Say = lambda _m: None,
    save: bool = True,
) -> Path:
    """The ``.keras`` file of variant ``name`` of ``selection``: the best trial's own file for ``best``, else
    the members combined at the variant's input size (built now unless the selection names a file that is
    there)."""
    v = selection.named(name)
    if v.name == BEST:
        (only,) = v.members
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == only)
        path = _Models(run, study, registry, weights, tuple(plugins), say).model(trial)
    elif v.model and (run.path / v.model).is_file():
        return run.path / v.model
    else:
        path = build_model(
            run, study, v, registry=registry, weights=weights, plugins=plugins, say=say
        )
    v.model = run.relative(path)
    if save:
        save_selection(run, selection)
    return path


def build_model(
    run: RunFolder,
    study: Study,
    v: Variant,
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    plugins: Sequence[str] = (),
    say: Say = lambda _m: None,
) -> Path:
    """Variant ``v``'s members combined in one ``.keras`` file in ``RUN_DIR/ensemble/`` (see :mod:`autotl.ensemble.model`)."""
    import os

    import keras

    from autotl.ensemble.model import combined_model

    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    say(f"building {v.name}: trials {', '.join(map(str, v.members))} in one model")
    members = []
    models = _Models(run, study, registry, weights, tuple(plugins), say)
    for number, weight in v.members.items():
        file = models.model(by_number[number])
        members.append((f"trial_{number}", keras.saving.load_model(file, safe_mode=True), weight))
    model = combined_model(members, v.tta, v.input_size, name=f"autotl_{v.name.replace('+', '_')}")
    path = run.ensemble_model(v.name.replace("+", "-"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)
    return path


# -- 6. the stored selection (saved and loaded by autotl.ensemble.record)


def current_selection(
    run: RunFolder,
    study: Study,
    k: Optional[int] = None,
    need: Optional[str] = None,
    **kwargs: Any,
) -> EnsembleSelection:
    """The stored selection when it is still the run's: this study's, on its data, chosen among the trials
    that are now its top candidates (a resumed search may have found better ones), of ``k`` candidates and
    with variant ``need`` when given; else a new one (``kwargs`` go to :func:`select_ensemble`)."""
    stored = load_selection(run)
    if (
        stored is not None
        and stored.study_name == study.study_name
        and stored.data_fingerprint == _fingerprint(run, study)
        and (k is None or stored.top_k == k)
        and (need is None or stored.variant(need) is not None)
        and _usable(candidates(run, study, stored.top_k)[0], stored) == stored.candidates
    ):
        return stored
    return select_ensemble(run, study, k=space_top_k(study) if k is None else k, **kwargs)


def _usable(top: Sequence[FrozenTrial], stored: EnsembleSelection) -> list[int]:
    """The numbers of ``top`` but those whose refit ``stored`` refused."""
    refused = {int(n) for n, r in stored.refits.items() if not r.get("passed")}
    return [t.number for t in top if t.number not in refused]


def space_top_k(study: Study) -> int:
    """``ensemble.top_k`` of the study's search space, else :data:`DEFAULT_TOP_K`."""
    ensemble = (study.user_attrs.get("space") or {}).get("ensemble") or {}
    return int(ensemble.get("top_k") or DEFAULT_TOP_K)


# -- for export: a single trial with TTA, and the members' own scores


def trial_variant(
    run: RunFolder,
    study: Study,
    trial: FrozenTrial,
    tta: str,
    dataset: Dataset,
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    plugins: Sequence[str] = (),
    say: Say = lambda _m: None,
) -> Variant:
    """Trial ``trial`` with test-time augmentation ``tta``: scored on the validation images (cached
    predictions) and built as one ``.keras`` file (``Variant.model``)."""
    mode = check_tta(tta)
    if mode is None:
        raise ValueError("trial_variant needs a test-time augmentation")
    size = input_sizes([trial], registry, plugins)[trial.number]
    files = _Models(run, study, registry, weights, tuple(plugins), say).files([trial])
    key = split_key("val", dataset.val, study.study_name, dataset.fingerprint)
    probs = predictions(
        run,
        files,
        dataset.val,
        key,
        n_classes=dataset.n_classes,
        ttas=[None, mode],
        sizes={trial.number: size},
        say=say,
    )
    members = {trial.number: 1.0}
    v = Variant(
        f"trial_{trial.number}+{mode}",
        members,
        mode,
        Score.of(mix(probs, members, mode), np.asarray(dataset.val.labels)),
        input_size=size,
    )
    built = build_model(run, study, v, registry=registry, weights=weights, plugins=plugins, say=say)
    v.model = run.relative(built)
    return v


def member_scores(
    run: RunFolder,
    study: Study,
    members: Sequence[int],
    dataset: Dataset,
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    plugins: Sequence[str] = (),
    say: Say = lambda _m: None,
) -> dict[int, Score]:
    """Each member alone on the validation images, at its own size (what the search scored it on)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    trials = [by_number[n] for n in members]
    files = _Models(run, study, registry, weights, tuple(plugins), say).files(trials)
    key = split_key("val", dataset.val, study.study_name, dataset.fingerprint)
    sizes = input_sizes(trials, registry, plugins)
    probs = predictions(
        run, files, dataset.val, key, n_classes=dataset.n_classes, ttas=[None], sizes=sizes, say=say
    )
    y = np.asarray(dataset.val.labels)
    return {n: Score.of(probs[(n, None)], y) for n in members}
