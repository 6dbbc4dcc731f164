"""A trial's deployable model: assembled from what it stored, when someone asks for it.

A search stores only what a trial trained (the head, and the unfrozen top
blocks) as a plain ``.npz``, in the run folder and in the study's artifact
store (:mod:`autotl.run.artifacts`); finishing a trial costs milliseconds.  The full
``.keras`` model -- resize, the backbone's preprocessing, the pretrained base
with the trained top, the head -- is assembled here: for ``best_model.keras``
when a search ends, for an export of another trial, for a report's evaluation
or for ``Run.best_model()``.  Assembly needs the trial's backbone plugin and
the very weights it was trained on, which are checked by SHA-256.  Any
machine that reaches the study's artifact store can do it: the layers (or the
best model itself) are fetched from there when this run folder lacks them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.errors import UsageError, first_line
from autotl.run.folder import OPTUNA, RunFolder
from autotl.scoring.objective import best_trial

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import WeightsSource

__all__ = [
    "LayersNotHere",
    "trial_backbone",
    "trial_model",
    "update_best_model",
    "weights_of_run",
    "record_artifact",
    "study_store",
]

MakeBase = Callable[[Any, Any, int], Any]
#: The study's user attribute naming its artifact store (absent or None: each run folder's own).
ARTIFACTS_ATTR = "artifacts"
BEST_MODEL_ARTIFACT = "best_model_artifact"


class LayersNotHere(UsageError):
    """A trial's stored layers are neither in this run folder nor in the study's artifact store."""


def study_store(run: RunFolder, study: Study) -> Any:
    """The artifact store ``study`` records (another machine's S3 bucket, say), else the run folder's."""
    return run.artifact_store((getattr(study, "user_attrs", None) or {}).get(ARTIFACTS_ATTR))


def weights_of_run(run: RunFolder, weights: Optional[WeightsSource] = None) -> Any:
    """Where the run's backbones came from: ``weights`` (a ``WeightsSource``) if given, else what run.json records."""
    from autotl.backbones.weights import WeightsSource

    if weights is not None:
        return weights
    recorded = str(run.record().get("weights") or "")
    if recorded in ("none", "imagenet"):
        return WeightsSource(recorded)
    if recorded:
        return WeightsSource.parse(
            weights_dir=recorded
        )  # a folder that is gone is a one-line UsageError
    raise UsageError(
        "the run folder does not record where the backbone weights came from; "
        "pass --weights-dir DIR or --weights none|imagenet"
    )


def trial_model(
    run: RunFolder,
    study: Study,
    trial: FrozenTrial,
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    make_base: Optional[MakeBase] = None,
    plugins: tuple[str, ...] = (),
    say: Callable[[str], None] = lambda _m: None,
) -> Path:
    """The ``.keras`` file of ``trial`` (a FrozenTrial of ``study``): already there, the best model's copy,
    or assembled from its stored layers now.  ``make_base(spec, weights, seed)``, if given, returns a
    pristine base to build on (the search passes its own, to save building one)."""
    store = study_store(run, study)
    found = _model_here(run, study, trial, store)
    if found is not None:
        return found
    stored = run.trial_layers(trial, store)
    if stored is None:
        kept = run.kept_trials()
        raise LayersNotHere(
            f"trial {trial.number} has no saved model here (only the --keep-models best trials keep "
            "theirs, and another worker's stay in its own run folder unless --artifacts "
            "s3://bucket/prefix or a shared folder holds them); "
            f"trials with a model: {', '.join(map(str, kept)) or 'none'}"
        )
    from autotl.training.model import restore_model

    spec, resolved = trial_backbone(run, trial, registry, weights, plugins)
    say(f"assembling trial {trial.number}'s model from its stored layers")
    seed = int((study.user_attrs.get("space") or {}).get("seed", 0))
    model = restore_model(
        spec,
        resolved,
        len(run.class_names(study)),
        trial.params["head_width"],
        trial.params["dropout"],
        stored,
        seed=seed,
        base=make_base(spec, resolved, seed) if make_base else None,
    )
    path = run.trial_model(trial.number)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def _model_here(run: RunFolder, study: Study, trial: FrozenTrial, store: Any) -> Optional[Path]:
    """``trial``'s ``.keras`` file when there is one already: its own, the best model, or the best model
    another machine put in the artifact store."""
    for path in (
        run.path / str(trial.user_attrs.get("model_path", "-")),
        run.trial_model(trial.number),
    ):
        if path.is_file():
            return path
    if run.best_trial_number(OPTUNA) == trial.number:
        return run.best_model(OPTUNA)
    return _best_model_artifact(run, study, trial, store)


def trial_backbone(
    run: RunFolder,
    trial: FrozenTrial,
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    plugins: tuple[str, ...] = (),
) -> tuple[Any, Any]:
    """The trial's backbone spec and its weights here, which must be the bytes it was trained on (its
    plugin installed, its weights file by SHA-256); else a one-line UsageError saying what to pass."""
    from autotl.backbones.weights import resolve_weights

    if registry is None:
        from autotl.backbones.registry import get_registry

        registry = get_registry(list(plugins))
    name = trial.params["backbone"]
    if name not in registry.backbones:
        raise UsageError(
            f"trial {trial.number} used backbone {name!r} from plugin {trial.user_attrs.get('plugin', '?')!r}, "
            "which is not installed here; install it or pass --plugin MODULE"
        )
    spec = registry.backbone(name)
    resolved = resolve_weights(spec, weights_of_run(run, weights))
    trained_on = trial.user_attrs.get("weights_sha256")
    if trained_on and resolved.sha256 and trained_on != resolved.sha256:
        raise UsageError(
            f"trial {trial.number} was trained on {name} weights with SHA-256 {trained_on[:12]}..., but "
            f"{resolved.origin} has {resolved.sha256[:12]}...; pass the --weights-dir the search used"
        )
    return spec, resolved


def _best_model_artifact(
    run: RunFolder, study: Study, trial: FrozenTrial, store: Any
) -> Optional[Path]:
    """The best model another machine assembled for ``trial`` and put in the artifact store, fetched; else None."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    from autotl.run.artifacts import download

    recorded = (study.user_attrs or {}).get(BEST_MODEL_ARTIFACT) or {}
    if recorded.get("trial") != trial.number or not recorded.get("artifact_id"):
        return None
    try:
        return download(store, recorded["artifact_id"], run.trial_model(trial.number))
    except ArtifactNotFound:
        return None


def share_best_model(run: RunFolder, study: Study, trial: FrozenTrial, path: Path) -> None:
    """Put the best model in the study's artifact store (once per trial), so any machine can report and export it;
    the previous best's copy is removed."""
    from autotl.run.artifacts import remove, upload

    recorded = (study.user_attrs or {}).get(BEST_MODEL_ARTIFACT) or {}
    if recorded.get("trial") == trial.number:
        return
    store = study_store(run, study)
    artifact_id = upload(store, study, path)
    study.set_user_attr(BEST_MODEL_ARTIFACT, {"trial": trial.number, "artifact_id": artifact_id})
    if recorded.get("artifact_id"):
        remove(store, recorded["artifact_id"])


def update_best_model(
    run: RunFolder,
    study: Study,
    registry: Optional[Registry],
    weights: Optional[WeightsSource],
    storage_url: Optional[str] = None,
    make_base: Optional[MakeBase] = None,
) -> Optional[Path]:
    """Make ``best_model.keras`` the study's best trial's model (a no-op when it already is); record its lineage."""
    best = best_trial(study)
    if best is None:
        return None
    if run.best_trial_number() == best.number:
        return run.best_model()
    path = run.install_best(
        trial_model(run, study, best, registry, weights, make_base),
        best.number,
        best.params,
        values=best.values,
    )
    record_artifact(run.storage_url(storage_url), study, best, path, "best_model")
    try:
        share_best_model(run, study, best, path)
    except Exception as exc:  # the model is in place; other machines will assemble their own
        import warnings

        warnings.warn(f"best model not put in the artifact store: {first_line(exc)}", stacklevel=2)
    return path


def record_artifact(
    storage_url: str, study: Study, trial: FrozenTrial, path: Path, kind: str
) -> None:
    """Lineage of a stored file in the study's database; it must never cost a finished trial (a warning instead)."""
    from autotl.run.lineage import record_model

    try:
        record_model(
            storage_url, study.study_name, trial, path, kind, data=study.user_attrs.get("data")
        )
    except Exception as exc:  # the file is in place; say why its lineage is missing
        import warnings

        warnings.warn(f"lineage not recorded for {path}: {first_line(exc)}", stacklevel=2)
