"""A finished trial rebuilt from the feature cache, for a trial whose layers the search did not keep.

A search keeps the layers of its ``--keep-models`` best trials only; an
ensemble of the top K needs the others too.  Training on cached features is
deterministic on one machine (the head starts from the trial's seed, batches
and dropout masks are drawn from it), so a trial's layers can be trained again
from what the study records: its parameters, the space it was drawn from, its
seed.  A refit is trusted only when it scores what the search recorded, as an
export is checked against the search's score: the same validation accuracy
to the image and the same loss within export parity's tolerance.  A refit that
disagrees is refused (:attr:`Refit.passed` False, :attr:`Refit.reason` says
why in one line) and nothing is stored; one that agrees stores its layers like
a kept trial's, with ``refit.json`` beside them, so the next ensemble reuses it.

:func:`refit_model` is the same for one trial a user asks for (``autotl export
--trial N``): its ``.keras`` file, refitted first when its layers were not kept.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.engine.space import SearchSpace, trial_params
from autotl.errors import TrialFailed, UsageError, first_line
from autotl.run.folder import RunFolder
from autotl.run.trial_models import LayersNotHere, trial_backbone, trial_model
from autotl.scoring.objective import trial_metrics

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import Dataset
    from autotl.training.params import TrialParams

__all__ = [
    "Bases",
    "Refit",
    "RefitRefused",
    "REFIT_FILE",
    "refit_model",
    "refit_trial",
    "stored_refit",
    "LOSS_ATOL",
    "LOSS_RTOL",
]

#: The refit's validation loss against the recorded one: export parity's tolerance
#: (``autotl.export._common.REPRODUCE_LOSS_*``); the accuracy must match to the image.
LOSS_ATOL, LOSS_RTOL = 1e-4, 1e-3
#: Beside a refitted trial's layers: what the refit measured, so a later ensemble says so without refitting.
REFIT_FILE = "refit.json"

Say = Callable[[str], None]


class RefitRefused(UsageError):
    """A trial's refit did not reproduce what the search recorded; nothing was stored."""


@dataclass
class Refit:
    """One trial's refit: what the search recorded, what the refit scored, and whether they agree."""

    trial: int
    passed: bool
    seconds: float
    recorded: dict[str, Any] = field(default_factory=dict)
    refitted: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why it was refused (empty when it passed)
    reused: bool = False  # an earlier refit's stored layers, not trained now

    def line(self) -> str:
        """The refit in one line, for the ensemble's notes."""
        if not self.passed:
            return f"trial {self.trial} left out: its refit was refused: {self.reason}"
        when = "refitted earlier" if self.reused else f"refitted in {self.seconds:.1f} s"
        acc = self.refitted.get("val_accuracy", float("nan"))
        return (
            f"trial {self.trial} {when} from the feature cache (its layers were not kept); "
            f"validation accuracy {acc:.4f} and loss {self.refitted.get('val_loss', float('nan')):.4f} "
            "as the search recorded"
        )


def stored_refit(run: RunFolder, number: int) -> Optional[Refit]:
    """The refit stored for trial ``number`` (its layers still there), else None."""
    import json

    path = run.trial_dir(number) / REFIT_FILE
    if not path.is_file() or not (run.trial_dir(number) / run.TRIAL_LAYERS).is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return Refit(**{**record, "reused": True})
    except (ValueError, TypeError):
        return None


class Bases:
    """One pristine base per backbone and seed for a series of refits, reset before each (as the search's)."""

    def __init__(self) -> None:
        self._bases: dict[tuple[str, str, int], tuple[Any, list[Any]]] = {}

    def __call__(self, spec: Any, weights: Any, seed: int) -> Any:
        from autotl.training.model import build_base

        key = (spec.name, weights.sha256 or weights.origin, seed)
        if key not in self._bases:
            base = build_base(spec, weights, seed=seed)
            self._bases[key] = (base, base.get_weights())
        base, pristine = self._bases[key]
        base.trainable = False
        base.set_weights(pristine)
        return base


def refit_trial(
    run: RunFolder,
    study: Study,
    trial: FrozenTrial,
    dataset: Dataset,
    *,
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    bases: Optional[Bases] = None,
    say: Say = lambda _m: None,
) -> Refit:
    """Train ``trial`` (a FrozenTrial of ``study``) again from the feature cache, check it against its
    record, and store its layers when it agrees.  ``dataset`` must be the search's (same fingerprint).

    A trial that cannot be refitted at all (its backbone not installed, other weights) raises a one-line
    UsageError; one that trains but disagrees comes back refused.
    """
    from autotl.training.trainer import train_trial

    start = time.perf_counter()
    spec, resolved, params, space = _setup(run, study, trial, registry, weights)
    make = bases or Bases()
    cache = _cache(run)
    say(f"refitting trial {trial.number} ({params.backbone}) from the feature cache")
    try:
        result = train_trial(
            spec,
            params,
            lambda: make(spec, resolved, params.seed),
            dataset,
            cache,
            resolved,
            progress=lambda msg: say(f"refit of trial {trial.number}: {msg}"),
            augmentation=space.augmentation,
        )
    except TrialFailed as exc:  # it diverged, which the recorded trial did not
        return Refit(trial.number, False, round(time.perf_counter() - start, 3), reason=str(exc))
    refit = _compare(trial, result, len(dataset.val), time.perf_counter() - start)
    if refit.passed:
        run.save_trial_layers(trial.number, result.trained_weights())
        run.write_json(run.trial_dir(trial.number) / REFIT_FILE, asdict(refit))
    return refit


def refit_model(
    run: RunFolder,
    study: Study,
    trial: FrozenTrial,
    dataset: Optional[Callable[[], tuple[Dataset, bool]]],
    *,
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    plugins: tuple[str, ...] = (),
    say: Say = lambda _m: None,
) -> Path:
    """``trial``'s ``.keras`` file as :func:`autotl.run.trial_models.trial_model` finds it, or, when its
    layers were not kept, refitted from the feature cache first (once: the refit is stored).

    ``dataset()`` returns the search's data set again and whether it is the search's (only that one
    refits); ``dataset=None`` refuses a trial not kept, as :func:`trial_model` does.  Raises :class:`RefitRefused` when the refit disagrees with the record, and
    :class:`~autotl.run.trial_models.LayersNotHere` when the cache no longer holds the trial's features.
    """

    def model() -> Path:
        return trial_model(run, study, trial, registry, weights, plugins=plugins, say=say)

    try:
        path = model()
    except LayersNotHere:  # not kept: refitted below, if asked and the cache still can
        if dataset is None:
            raise
        _check_cache(run, trial)
    else:
        earlier = stored_refit(run, trial.number)
        if earlier is not None:
            say(earlier.line())
        return path
    data, same = dataset()
    if not same:
        raise UsageError(
            f"trial {trial.number}'s layers were not kept and it cannot be refitted: the data at "
            f"{data.source} is not the search's (its fingerprint differs); pass the search's data with --data"
        )
    if registry is None:
        from autotl.backbones.registry import get_registry

        registry = get_registry(list(plugins))
    refit = refit_trial(run, study, trial, data, registry=registry, weights=weights, say=say)
    if not refit.passed:
        raise RefitRefused(
            f"trial {trial.number}'s layers were not kept and its refit from the feature cache was "
            f"refused: {refit.reason}"
        )
    say(refit.line())
    return model()


def _check_cache(run: RunFolder, trial: FrozenTrial) -> None:
    """A one-line LayersNotHere unless the feature cache still holds every entry ``trial`` trained on."""
    cache = _cache(run)
    used = [
        entry["key"]
        for entry in (trial.user_attrs.get("cache") or {}).values()
        if isinstance(entry, dict) and entry.get("key")
    ]
    gone = [key for key in used if not (cache.root / key / "meta.json").is_file()]
    if not gone and used:
        return
    where = f"the feature cache {cache.root} no longer holds its backbone's features"
    if not used:
        where = "the search recorded no feature cache entry for it"
    raise LayersNotHere(
        f"trial {trial.number}'s layers were not kept and it cannot be refitted: {where}; rerun the "
        f"search with --keep-models covering it (or keep its cache), or pick a trial with a model "
        f"({', '.join(map(str, run.kept_trials())) or 'none'})"
    )


def _setup(
    run: RunFolder,
    study: Study,
    trial: FrozenTrial,
    registry: Optional[Registry],
    weights: Optional[WeightsSource],
) -> tuple[Any, Any, TrialParams, SearchSpace]:
    """The trial's backbone spec, resolved weights (checked against its record), parameters and space."""
    import optuna
    from pydantic import ValidationError

    from autotl.engine.optuna_engine import SCREEN, SEED_ATTR

    try:
        space = SearchSpace.model_validate(study.user_attrs.get("space") or {})
    except ValidationError as exc:
        raise UsageError(
            f"trial {trial.number} cannot be refitted: the study's recorded space no longer loads "
            f"({first_line(exc)})"
        ) from None
    screen = trial.user_attrs.get("stage") == SCREEN
    params = trial_params(optuna.trial.FixedTrial(dict(trial.params)), space, screen=screen)
    params = dataclasses.replace(params, seed=int(trial.user_attrs.get(SEED_ATTR, params.seed)))
    spec, resolved = trial_backbone(run, trial, registry, weights)
    return spec, resolved, params, space


def _cache(run: RunFolder) -> Any:
    """The feature cache the search used, as run.json records it (else the run folder's, in float16)."""
    from autotl.training.cache import FeatureCache

    recorded = run.record().get("cache") or {}
    folder = Path(recorded["dir"]) if recorded.get("dir") else run.cache_dir
    return FeatureCache(
        folder,
        recorded.get("dtype") or "float16",
        mixed_precision=bool(recorded.get("mixed_precision")),
    )


def _compare(trial: Any, result: Any, n_val: int, seconds: float) -> Refit:
    """The refit's scores against the trial's record: accuracy to the image, loss within tolerance,
    and the same phase-2 outcome; the first disagreement is the refusal's reason."""
    recorded = trial_metrics(trial)
    rec_acc, rec_loss = float(recorded["val_accuracy"]), float(recorded["val_loss"])
    acc, loss = float(result.val_accuracy), float(result.val_loss)
    refit = Refit(
        trial.number,
        False,
        round(seconds, 3),
        {"val_accuracy": rec_acc, "val_loss": rec_loss, "phase2_kept": _kept(trial)},
        {"val_accuracy": acc, "val_loss": loss, "phase2_kept": bool(result.phase2_kept)},
    )
    hits, rec_hits = round(acc * n_val), round(rec_acc * n_val)
    if _kept(trial) is not None and _kept(trial) != result.phase2_kept:
        refit.reason = (
            f"phase 2 was {'kept' if result.phase2_kept else 'not kept'} in the refit but "
            f"{'kept' if _kept(trial) else 'not kept'} in the search"
        )
    elif hits != rec_hits:
        refit.reason = f"it scores {hits}/{n_val} validation images right, the search recorded {rec_hits}/{n_val}"
    elif abs(loss - rec_loss) > LOSS_ATOL + LOSS_RTOL * abs(rec_loss):
        refit.reason = f"its validation loss is {loss:.6f}, the search recorded {rec_loss:.6f}"
    refit.passed = not refit.reason
    if refit.reason:
        refit.reason += " (other cache, seed or parameters than the search's?)"
    return refit


def _kept(trial: Any) -> Optional[bool]:
    kept = trial.user_attrs.get("phase2_kept")
    return None if kept is None else bool(kept)
