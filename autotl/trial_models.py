"""A trial's deployable model: assembled from what it stored, when someone asks for it.

A search stores only what a trial trained (the head, and the unfrozen top
blocks) as a plain ``.npz``; finishing a trial costs milliseconds.  The full
``.keras`` model -- resize, the backbone's preprocessing, the pretrained base
with the trained top, the head -- is assembled here: for ``best_model.keras``
when a search ends, for an export of another trial, for a report's evaluation
or for ``Run.best_model()``.  Assembly needs the trial's backbone plugin and
the very weights it was trained on, which are checked by SHA-256.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from autotl.errors import UsageError, first_line
from autotl.objective import best_trial
from autotl.runfolder import OPTUNA, RunFolder

__all__ = ["trial_model", "update_best_model", "weights_of_run", "record_artifact"]

MakeBase = Callable[[Any, Any, int], Any]


def weights_of_run(run: RunFolder, weights: Any = None) -> Any:
    """Where the run's backbones came from: ``weights`` (a ``WeightsSource``) if given, else what run.json records."""
    from autotl.weights import WeightsSource

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
    study: Any,
    trial: Any,
    registry: Any = None,
    weights: Any = None,
    make_base: Optional[MakeBase] = None,
    plugins: tuple[str, ...] = (),
    say: Callable[[str], None] = lambda _m: None,
) -> Path:
    """The ``.keras`` file of ``trial`` (a FrozenTrial of ``study``): already there, the best model's copy,
    or assembled from its stored layers now.  ``make_base(spec, weights, seed)``, if given, returns a
    pristine base to build on (the search passes its own, to save building one)."""
    for path in (
        run.path / str(trial.user_attrs.get("model_path", "-")),
        run.trial_model(trial.number),
    ):
        if path.is_file():
            return path
    for engine in (OPTUNA,):
        if run.best_trial_number(engine) == trial.number:
            return run.best_model(engine)
    stored = run.trial_layers(trial)
    if stored is None:
        kept = run.kept_trials()
        raise UsageError(
            f"trial {trial.number} has no saved model (only the --keep-models best trials keep theirs); "
            f"trials with a model: {', '.join(map(str, kept)) or 'none'}"
        )
    if registry is None:
        from autotl.registry import get_registry

        registry = get_registry(list(plugins))
    name = trial.params["backbone"]
    if name not in registry.backbones:
        raise UsageError(
            f"trial {trial.number} used backbone {name!r} from plugin {trial.user_attrs.get('plugin', '?')!r}, "
            "which is not installed here; install it or pass --plugin MODULE"
        )
    from autotl.model import restore_model
    from autotl.weights import resolve_weights

    spec = registry.backbone(name)
    resolved = resolve_weights(spec, weights_of_run(run, weights))
    trained_on = trial.user_attrs.get("weights_sha256")
    if trained_on and resolved.sha256 and trained_on != resolved.sha256:
        raise UsageError(
            f"trial {trial.number} was trained on {name} weights with SHA-256 {trained_on[:12]}..., but "
            f"{resolved.origin} has {resolved.sha256[:12]}...; pass the --weights-dir the search used"
        )
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


def update_best_model(
    run: RunFolder,
    study: Any,
    registry: Any,
    weights: Any,
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
    return path


def record_artifact(storage_url: str, study: Any, trial: Any, path: Path, kind: str) -> None:
    """Lineage of a stored file in the study's database; it must never cost a finished trial (a warning instead)."""
    from autotl.lineage import record_model

    try:
        record_model(
            storage_url, study.study_name, trial, path, kind, data=study.user_attrs.get("data")
        )
    except Exception as exc:  # the file is in place; say why its lineage is missing
        import warnings

        warnings.warn(f"lineage not recorded for {path}: {first_line(exc)}", stacklevel=2)
