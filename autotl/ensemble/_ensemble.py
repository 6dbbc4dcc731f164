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

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

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
from autotl.scoring.objective import Objectives, ranked_trials

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
    "val_accuracy": caruana.accuracy,
    "val_loss": lambda p, y: -caruana.log_loss(p, y),
}
Say = Callable[[str], None]
Measure = Callable[[Path], dict[str, Any]]


# -- 1. candidates


def _has_model(run: RunFolder, trial: Any) -> bool:
    return (
        run.trial_layers(trial) is not None
        or run.trial_model(trial.number).is_file()
        or run.best_trial_number() == trial.number
    )


def candidates(run: RunFolder, study: Any, k: int) -> tuple[list[Any], list[str]]:
    """The top ``k`` complete trials, best first, and notes; those whose layers were not kept are
    refitted when the ensemble needs them (:func:`refit_missing`)."""
    if k < 2:
        raise UsageError(f"an ensemble needs top_k of at least 2, got {k}")
    top = ranked_trials(study)[:k]
    if len(top) < 2:
        raise UsageError(
            f"an ensemble needs at least 2 complete trials, but {run.path} has {len(top)}"
        )
    notes = []
    if len(top) < k:
        notes.append(f"the study has {len(top)} complete trials, fewer than top_k {k}")
    return top, notes


def refit_missing(
    run: RunFolder,
    study: Any,
    trials: Sequence[Any],
    dataset: Any,
    registry: Any = None,
    weights: Any = None,
    plugins: Sequence[str] = (),
    say: Say = lambda _m: None,
) -> tuple[list[Any], dict[int, Refit]]:
    """``trials`` with a model: kept by the search, refitted earlier, or refitted now from the feature
    cache (:mod:`autotl.engine.refit`); a refit that does not reproduce its trial's record is left out.
    Returns the usable trials, in order, and every refit by trial number."""
    from autotl.engine.refit import Bases, refit_trial, stored_refit

    usable, refits, bases = [], {}, Bases()
    for t in trials:
        refit = stored_refit(run, t.number)
        if refit is None and not _has_model(run, t):
            if registry is None:
                from autotl.backbones.registry import get_registry

                registry = get_registry(list(plugins))
            refit = refit_trial(run, study, t, dataset, registry, weights, bases, say)
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


def _scorer(study: Any) -> tuple[str, Callable[[np.ndarray, np.ndarray], float], list[str]]:
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
    best: int,
    members: dict[int, float],
    ttas: Sequence[Optional[str]],
    sizes: Sizes,
    size: tuple[int, int],
    val: _Seen,
    test: Optional[_Seen],
) -> list[Variant]:
    """The best single model and the ensemble, each without and with every TTA, scored on val and test."""
    out = []
    for base, chosen, view, at in (
        (BEST, {best: 1.0}, "own", sizes[best]),
        (ENSEMBLE, members, "joint", size),
    ):
        for tta in ttas:
            scores = [
                None if s is None else Score.of(mix(getattr(s, view), chosen, tta), s.labels)
                for s in (val, test)
            ]
            out.append(Variant(variant_name(base, tta), dict(chosen), tta, *scores, input_size=at))
    return out


def _dataset(
    run: RunFolder,
    study: Any,
    data: Optional[str],
    plugins: Sequence[str],
    registry: Any,
    dataset: Any = None,
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


def _fingerprint(run: RunFolder, study: Any) -> Optional[str]:
    """The fingerprint of the search's data, as the study or run.json recorded it."""
    recorded = (study.user_attrs.get("data") or {}).get("fingerprint")
    return recorded or run.record().get("data_fingerprint")


def select_ensemble(
    run: RunFolder,
    study: Any,
    *,
    k: int = DEFAULT_TOP_K,
    tta: Optional[str] = "flip",
    test: Any = None,
    test_source: Optional[str] = None,
    init: int = 1,
    bags: int = 0,
    max_steps: int = 50,
    data: Optional[str] = None,
    dataset: Any = None,
    registry: Any = None,
    weights: Any = None,
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
    if init < 1 or bags < 0 or max_steps < 0:
        raise UsageError(
            f"init must be at least 1 and bags and max_steps at least 0, got init={init}, bags={bags}, "
            f"max_steps={max_steps}"
        )
    trials, notes = candidates(run, study, k)
    dataset = _dataset(run, study, data, plugins, registry, dataset)
    trials, refits = refit_missing(run, study, trials, dataset, registry, weights, plugins, say)
    notes += [r.line() for r in refits.values()]
    if test is None and getattr(dataset, "test", None) is not None:
        test, test_source = dataset.test, test_source or "the data set's test split"
    if test is None:
        notes.append(
            "no test split: every score is on the validation images that also chose the trials and the "
            "ensemble, so all of them are optimistic"
        )
    ttas = [None, tta] if tta else [None]
    models = {t.number: _model_file(run, study, t, registry, weights, plugins, say) for t in trials}
    sizes = input_sizes(trials, registry, plugins)
    order, size = [t.number for t in trials], largest(sizes)
    val, on_test = (
        None
        if images is None
        else _seen(run, study, models, images, name, dataset, ttas, sizes, size, order[0], say)
        for name, images in (("val", dataset.val), ("test", test))
    )
    metric, scorer, more = _scorer(study)
    chosen = caruana.select(
        np.stack([val.joint[(t, None)] for t in order]),
        val.labels,
        scorer,
        init=init,
        bags=bags,
        max_steps=max_steps,
    )
    members = {order[i]: chosen.weights[i] for i in chosen.members}
    selection = EnsembleSelection(
        top_k=k,
        candidates=order,
        members=members,
        counts={order[i]: chosen.counts[i] for i in chosen.members},
        objective=metric,
        variants=_variants(order[0], members, ttas, sizes, size, val, on_test),
        test=None
        if test is None
        else {"source": test_source or "passed as test=", "images": len(test)},
        settings={"init": init, "bags": bags, "max_steps": max_steps, "tta": tta or "none"},
        steps=[{**s, "add": [order[i] for i in s["add"]]} for s in chosen.steps],
        notes=notes + more + _refitted_members(members, refits),
        refits={n: asdict(r) for n, r in refits.items()},
        study_name=study.study_name,
        data_fingerprint=dataset.fingerprint,
        input_size=size,
    )
    if measure is not None:
        _time(run, study, selection, measure, registry, weights, plugins, say)
    save_selection(run, selection)
    return selection


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
    run: RunFolder,
    study: Any,
    models: dict[int, Callable[[], Path]],
    images: Any,
    name: str,
    dataset: Any,
    ttas: Sequence[Optional[str]],
    sizes: Sizes,
    size: tuple[int, int],
    best: int,
    say: Say,
) -> _Seen:
    """The candidates' probabilities on ``images`` (the validation or test images), cached: all at the
    ensemble's ``size``, and the best trial at its own (the same files when the sizes are equal)."""
    n_classes = len(run.class_names(study))
    fingerprint = dataset.fingerprint if name == "val" else None
    key = split_key(name, images, study.study_name, fingerprint)
    joint = predictions(run, models, images, key, n_classes, ttas, dict.fromkeys(models, size), say)
    own = predictions(
        run, {best: models[best]}, images, key, n_classes, ttas, {best: sizes[best]}, say
    )
    return _Seen(own, joint, np.asarray(images.labels))


def _time(
    run: RunFolder,
    study: Any,
    selection: EnsembleSelection,
    measure: Measure,
    registry: Any,
    weights: Any,
    plugins: Sequence[str],
    say: Say,
) -> None:
    """Each variant's model built (if it is not a trial's own file) and timed by ``measure``."""
    for v in selection.variants:
        path = variant_model(
            run, study, selection, v.name, registry, weights, plugins, say, save=False
        )
        say(f"timing {v.name} ({run.relative(path)}) through TFLite")
        v.latency = measure(path)


def _model_file(
    run: RunFolder,
    study: Any,
    trial: Any,
    registry: Any,
    weights: Any,
    plugins: Sequence[str],
    say: Say,
) -> Callable[[], Path]:
    """Trial ``trial``'s ``.keras`` file, assembled from its stored layers only when first asked for."""
    return lambda: trial_model(
        run, study, trial, registry, weights, plugins=tuple(plugins), say=say
    )


# -- 5. models


def variant_model(
    run: RunFolder,
    study: Any,
    selection: EnsembleSelection,
    name: str,
    registry: Any = None,
    weights: Any = None,
    plugins: Sequence[str] = (),
    say: Say = lambda _m: None,
    save: bool = True,
) -> Path:
    """The ``.keras`` file of variant ``name`` of ``selection``: the best trial's own file for ``best``, else
    the members combined at the variant's input size (built now unless the selection names a file that is
    there)."""
    v = selection.variant(name)
    if v is None:
        raise UsageError(
            f"the run's ensemble has no variant {name!r}; it has {', '.join(x.name for x in selection.variants)} "
            "(run `autotl ensemble RUN_DIR --tta flip` to measure test-time augmentation)"
        )
    if v.name == BEST:
        (only,) = v.members
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == only)
        path = trial_model(run, study, trial, registry, weights, plugins=tuple(plugins), say=say)
    elif v.model and (run.path / v.model).is_file():
        return run.path / v.model
    else:
        path = build_model(run, study, v, registry, weights, plugins, say)
    v.model = run.relative(path)
    if save:
        save_selection(run, selection)
    return path


def build_model(
    run: RunFolder,
    study: Any,
    v: Variant,
    registry: Any = None,
    weights: Any = None,
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
    for number, weight in v.members.items():
        file = trial_model(
            run, study, by_number[number], registry, weights, plugins=tuple(plugins), say=say
        )
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
    study: Any,
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


def _usable(top: Sequence[Any], stored: EnsembleSelection) -> list[int]:
    """The numbers of ``top`` but those whose refit ``stored`` refused."""
    refused = {int(n) for n, r in stored.refits.items() if not r.get("passed")}
    return [t.number for t in top if t.number not in refused]


def space_top_k(study: Any) -> int:
    """``ensemble.top_k`` of the study's search space, else :data:`DEFAULT_TOP_K`."""
    ensemble = (study.user_attrs.get("space") or {}).get("ensemble") or {}
    return int(ensemble.get("top_k") or DEFAULT_TOP_K)


# -- for export: a single trial with TTA, and the members' own scores


def trial_variant(
    run: RunFolder,
    study: Any,
    trial: Any,
    tta: str,
    dataset: Any,
    registry: Any = None,
    weights: Any = None,
    plugins: Sequence[str] = (),
    say: Say = lambda _m: None,
) -> Variant:
    """Trial ``trial`` with test-time augmentation ``tta``: scored on the validation images (cached
    predictions) and built as one ``.keras`` file (``Variant.model``)."""
    tta = check_tta(tta)
    if tta is None:
        raise ValueError("trial_variant needs a test-time augmentation")
    size = input_sizes([trial], registry, plugins)[trial.number]
    models = {trial.number: _model_file(run, study, trial, registry, weights, plugins, say)}
    key = split_key("val", dataset.val, study.study_name, dataset.fingerprint)
    probs = predictions(
        run, models, dataset.val, key, dataset.n_classes, [None, tta], {trial.number: size}, say
    )
    members = {trial.number: 1.0}
    v = Variant(
        f"trial_{trial.number}+{tta}",
        members,
        tta,
        Score.of(mix(probs, members, tta), np.asarray(dataset.val.labels)),
        input_size=size,
    )
    v.model = run.relative(build_model(run, study, v, registry, weights, plugins, say))
    return v


def member_scores(
    run: RunFolder,
    study: Any,
    members: Sequence[int],
    dataset: Any,
    registry: Any = None,
    weights: Any = None,
    plugins: Sequence[str] = (),
    say: Say = lambda _m: None,
) -> dict[int, Score]:
    """Each member alone on the validation images, at its own size (what the search scored it on)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    trials = [by_number[n] for n in members]
    models = {t.number: _model_file(run, study, t, registry, weights, plugins, say) for t in trials}
    key = split_key("val", dataset.val, study.study_name, dataset.fingerprint)
    sizes = input_sizes(trials, registry, plugins)
    probs = predictions(run, models, dataset.val, key, dataset.n_classes, [None], sizes, say)
    y = np.asarray(dataset.val.labels)
    return {n: Score.of(probs[(n, None)], y) for n in members}
