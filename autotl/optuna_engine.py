"""The Optuna engine: what to try.  The trainer (``autotl.train``) decides how.

One study per run folder.  It lives in a SQLite file there by default; any
Optuna storage URL (PostgreSQL for many workers) works.  Rerunning the same
search resumes: finished trials are kept and only the missing ones run,
because the trial budget counts complete and pruned trials in the study, not
trials of this process.  The sampler is the space's (``sampler``), the
objectives are the space's (``objectives``), and every "best" is
:func:`autotl.objective.ranked_trials`' order.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from autotl.errors import TrialFailed
from autotl.objective import Objectives, ranked_trials
from autotl.registry import Registry
from autotl.runfolder import RunFolder
from autotl.space import SearchSpace, trial_params
from autotl.trial_models import LayersNotHere, record_artifact, update_best_model
from autotl.weights import WeightsSource, resolve_weights

__all__ = ["SearchConfig", "open_search_study", "run_search", "FULL", "SCREEN", "FINALIST"]

Event = Callable[[dict[str, Any]], None]
#: A trial's stage (user attribute ``stage``): an ordinary trial, a screening trial (phase 1 only),
#: or a finalist's fine-tuning trial (see ``screening`` in the search space).
FULL, SCREEN, FINALIST = "full", "screen", "finalist"


@dataclass
class SearchConfig:
    out: Path  # the run folder
    space: SearchSpace
    trials: int
    weights: WeightsSource
    storage: Optional[str] = None
    study_name: str = "autotl"
    keep_models: int = 3
    timeout: Optional[float] = None
    record: dict[str, Any] = field(
        default_factory=dict
    )  # what run.json keeps: command, weights, ...
    heartbeat: int = 30  # seconds; a worker silent for 4 heartbeats is declared dead
    worker_index: int = 0  # offsets the sampler's seed, so workers draw different points
    # the feature cache: its folder (default RUN_DIR/cache), the bytes it may hold (default: the
    # disk's free space), its dtype, and its forward pass in float16 (a GPU option)
    cache_dir: Optional[Path] = None
    cache_budget: Optional[int] = None
    cache_dtype: str = "float16"
    mixed_precision: bool = False
    # the artifact store (default: the one the study records, else RUN_DIR/artifacts)
    artifacts: Optional[str] = None

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.out)

    @property
    def storage_url(self) -> str:
        return self.run.storage_url(self.storage)

    @property
    def objectives(self) -> Objectives:
        return Objectives.of(self.space.objectives)


def open_search_study(cfg: SearchConfig) -> Any:
    """Create or resume the study with the space's objectives, sampler and pruner.

    A resumed study, or another worker, must not draw the same points again:
    the sampler's seed is offset by the trials already there and by the
    worker's index.  Pruning acts on one step axis across both phases (phase-2
    epochs are steps ``phase1.epochs + e``), after a warm-up that covers phase 1;
    Optuna prunes single-objective studies only, so several objectives turn it off.
    """
    import optuna

    from autotl.samplers import make_sampler
    from autotl.storage import open_study

    objectives = cfg.objectives
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=cfg.space.phase1.epochs)
        if len(objectives) == 1
        else optuna.pruners.NopPruner()
    )
    study = open_study(
        cfg.storage_url,
        cfg.study_name,
        directions=objectives.directions,
        pruner=pruner,
        heartbeat=cfg.heartbeat,
    )
    offset = len(study.get_trials(deepcopy=False)) + 1000 * cfg.worker_index
    study.sampler = make_sampler(cfg.space.sampler, cfg.space.seed + offset, len(objectives))
    return study


class _TrialRunner:
    """The function Optuna calls for each trial: ask for a point, train it, record what happened."""

    def __init__(
        self, cfg: SearchConfig, registry: Registry, dataset: Any, on_event: Event
    ) -> None:
        from autotl.cache import FeatureCache

        self.cfg, self.registry, self.dataset, self.on_event = cfg, registry, dataset, on_event
        self.cache = FeatureCache(
            cfg.cache_dir or cfg.run.cache_dir,
            cfg.cache_dtype,
            cfg.cache_budget,
            cfg.mixed_precision,
            warn=lambda msg: on_event({"warning": msg}),
        )
        self.store = cfg.run.artifact_store(cfg.artifacts)
        self._bases: dict[tuple, tuple[Any, list]] = {}

    def base(self, spec: Any, weights: Any, seed: int) -> Any:
        """This process's base for ``spec``: built once, reset to its pretrained weights before each use.

        Building a base costs a second or more (ResNet50: several); a trial
        only needs one with the pretrained weights, which a reset restores.
        """
        from autotl.model import build_base

        key = (spec.name, weights.argument, weights.sha256, seed)
        if key not in self._bases:
            base = build_base(spec, weights, seed=seed)
            self._bases[key] = (base, base.get_weights())
        base, pristine = self._bases[key]
        base.trainable = False
        base.set_weights(
            pristine
        )  # undo the last trial's fine-tuning (or the best model's assembly)
        return base

    def __call__(self, trial: Any) -> Any:
        from optuna.trial import TrialState

        live = trial.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        earlier = [t for t in live if t.number < trial.number]
        if len(earlier) >= self.cfg.trials:  # another worker got there first
            trial.set_user_attr(
                "fail_reason", "surplus: other workers had already taken the whole trial budget"
            )
            raise TrialFailed("surplus trial: the budget was already taken by other workers")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        stage = trial.user_attrs.get("stage") or self._stage(earlier)
        trial.set_user_attr("stage", stage)
        params = trial_params(trial, self.cfg.space, screen=stage == SCREEN)
        spec = self.registry.backbone(params.backbone)
        weights = resolve_weights(spec, self.cfg.weights)
        for key, value in (
            ("weights_sha256", weights.sha256),
            ("weights_origin", weights.origin),
            ("plugin", spec.plugin),
        ):
            trial.set_user_attr(key, value)
        event = {"trial": trial.number, "backbone": spec.name}
        start = time.perf_counter()
        try:
            from autotl.train import train_trial

            result = train_trial(
                spec,
                params,
                lambda: self.base(spec, weights, params.seed),
                self.dataset,
                self.cache,
                weights,
                self._reporter(trial, params, event),
                lambda msg: self.on_event({**event, "status": msg}),
                self.cfg.space.augmentation,
            )
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            self.on_event({**event, "failed": str(exc)})
            raise
        for key, value in result.attrs().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds_total", time.perf_counter() - start)
        metrics = result.attrs()["metrics"]
        if self._worth_keeping(trial, metrics):
            self._store_layers(trial, result)
        values = self.cfg.objectives.values(metrics)
        return values[0] if len(values) == 1 else values

    def _store_layers(self, trial: Any, result: Any) -> None:
        """Only what the trial trained is stored (milliseconds), here and in the artifact store; the full
        model is assembled on demand, on any machine that reaches the store."""
        from autotl.artifacts import upload

        relative = self.cfg.run.save_trial_layers(trial.number, result.trained_weights())
        trial.set_user_attr("weights_path", relative)
        try:
            artifact_id = upload(self.store, trial, self.cfg.run.path / relative)
        except Exception as exc:  # the store is down: other machines could not assemble this trial
            raise TrialFailed(
                f"cannot store the trial's layers in the artifact store: {exc}"
            ) from exc
        trial.set_user_attr("layers_artifact", artifact_id)

    def prepare(self, should_stop: Callable[[], bool]) -> None:
        """Compute every backbone's features before the first trial (the cache build, with its progress),
        so a build that fails -- a full disk, say -- leaves the study without a failed trial.  Workers
        start from different backbones, so they build different ones at once."""
        names = list(self.cfg.space.backbones)
        k = self.cfg.worker_index % len(names)
        for name in names[k:] + names[:k]:
            if should_stop():
                return
            self._features(name)

    def _features(self, name: str) -> None:
        """Backbone ``name``'s phase-1 cache entry, and the boundaries the space may fine-tune from, as a trial builds them."""
        import optuna

        from autotl.train import prefetch_cuts

        space, p2 = self.cfg.space, self.cfg.space.phase2
        fixed = {
            "backbone": name,
            "head_width": space.head.width[0],
            "dropout": space.head.dropout.low,
            "unfreeze_blocks": p2.unfreeze_blocks.high,
            "finetune_lr": p2.learning_rate.low,
        }
        params = trial_params(optuna.trial.FixedTrial(fixed), space)
        spec = self.registry.backbone(name)
        weights = resolve_weights(spec, self.cfg.weights)
        self.cache.get(
            spec,
            lambda: self.base(spec, weights, params.seed),
            weights,
            self.dataset,
            None,
            batch_size=params.batch_size,
            augmentation=space.augmentation,
            seed=params.seed,
            prefetch=lambda b: prefetch_cuts(spec, params, b),
            say=lambda msg: self.on_event({"status": f"{name} | phase 1: {msg}", "backbone": name}),
        )

    def _reporter(
        self, trial: Any, params: Any, event: dict[str, Any]
    ) -> Callable[[int, float], None]:
        """``report(step, value)`` for the trainer: Optuna's intermediate value, a progress event, and pruning."""
        import optuna

        def report(step: int, value: float) -> None:
            phase = 1 if step < params.phase1_epochs else 2
            self.on_event(
                {
                    **event,
                    "phase": phase,
                    "epoch": step + 1 - (0 if phase == 1 else params.phase1_epochs),
                    "val_accuracy": value,
                }
            )
            if len(self.cfg.objectives) > 1:  # Optuna prunes single-objective studies only
                return
            trial.report(value, step)
            if trial.should_prune():
                trial.set_user_attr("pruned_at", {"phase": phase, "step": step})
                raise optuna.TrialPruned(f"pruned at step {step}")

        return report

    def _stage(self, earlier: list[Any]) -> str:
        """Screening while the screening trials among ``earlier`` (live trials before this one) leave room; finalists come enqueued."""
        screening = self.cfg.space.screening
        screened = sum(1 for t in earlier if t.user_attrs.get("stage") == SCREEN)
        return SCREEN if screening is not None and screened < screening.trials else FULL

    def _worth_keeping(self, trial: Any, metrics: dict[str, float]) -> bool:
        """Whether this trial would rank among the ``keep_models`` best so far (same order as :func:`ranked_trials`)."""
        ranked = ranked_trials(trial.study)
        if len(ranked) < self.cfg.keep_models:
            return True
        objectives = self.cfg.objectives
        return objectives.key(metrics, trial.number) < objectives.trial_key(
            ranked[self.cfg.keep_models - 1]
        )


def _after_trial(cfg: SearchConfig, store: Any) -> Callable[[Any, Any], None]:
    """Record the finished trial's lineage; drop the stored layers of trials out of the ``keep_models`` best
    (here and in the artifact store, once per process)."""
    from autotl.artifacts import remove

    removed: set[str] = set()

    def callback(study: Any, trial: Any) -> None:
        stored = cfg.run.trial_layers(trial)
        if trial.state.name == "COMPLETE" and stored is not None:
            record_artifact(cfg.storage_url, study, trial, stored, "trial_weights")
        for t in ranked_trials(study)[cfg.keep_models :]:
            cfg.run.drop_trial(t.number)
            artifact_id = t.user_attrs.get("layers_artifact")
            if artifact_id and artifact_id not in removed:
                remove(store, artifact_id)
                removed.add(artifact_id)

    return callback


def _enqueue_finalist(study: Any, space: SearchSpace, trials: list[Any]) -> bool:
    """Queue the next fine-tuning trial of a two-stage search, once its screening is done; whether one was queued.

    Finalists are the best complete screening trials (by :func:`ranked_trials`'
    order), fine-tuned in turn; the sampler draws each one's unfreeze depth and
    fine-tuning rate.
    """
    screening = space.screening
    screened = [t for t in trials if t.user_attrs.get("stage") == SCREEN]
    if screening is None or len(screened) < screening.trials:
        return False
    numbers = {t.number for t in screened}
    finalists = [t for t in ranked_trials(study) if t.number in numbers][: screening.finalists]
    if not finalists:  # every screening trial failed or was pruned: ordinary trials follow
        return False
    queued = sum(1 for t in trials if t.user_attrs.get("stage") == FINALIST)
    pick = finalists[queued % len(finalists)]
    fixed = {k: pick.params[k] for k in ("backbone", "head_width", "dropout")}
    study.enqueue_trial(
        fixed, user_attrs={"stage": FINALIST, "finalist_of": pick.number}, skip_if_exists=False
    )
    return True


def _artifact_store(study: Any, cfg: SearchConfig) -> Optional[str]:
    """The study's artifact store: the one it records (a worker given another is refused), else ``cfg.artifacts``."""
    from autotl.errors import UsageError
    from autotl.trial_models import ARTIFACTS_ATTR

    if ARTIFACTS_ATTR not in study.user_attrs:
        study.set_user_attr(ARTIFACTS_ATTR, cfg.artifacts)
        return cfg.artifacts
    recorded = study.user_attrs[ARTIFACTS_ATTR]
    if cfg.artifacts is not None and cfg.artifacts != recorded:
        from autotl.artifacts import describe

        raise UsageError(
            f"the study keeps its artifacts in {describe(recorded)}, not {cfg.artifacts}; "
            f"pass --artifacts {recorded or 'with the same value'} or leave it out"
        )
    return recorded


def _describe_study(study: Any, cfg: SearchConfig, dataset: Any) -> None:
    """What reports and exports read from the study itself (any worker may write it; the values are the same)."""
    from autotl.lineage import library_versions

    attrs = {
        "data": dataset.summary(),
        "class_names": list(dataset.class_names),
        "space": cfg.space.model_dump(),
        "objectives": cfg.objectives.names,
        "sampler": cfg.space.sampler,
        "engine": "optuna",
        "versions": library_versions(),
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def run_search(
    cfg: SearchConfig,
    registry: Registry,
    dataset: Any,
    on_event: Optional[Event] = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Any:
    """Run (or resume, or join) the study until it holds ``cfg.trials`` complete or pruned trials.

    Every worker runs this same loop against the shared storage: it takes a
    trial while the budget has room, waits while other workers' running trials
    could still fill it, and picks up a trial that a dead worker left behind
    (its heartbeat stopped, so Optuna failed it and queued a retry).  The budget
    counts trials of the whole study, so N workers make ``cfg.trials`` trials
    in total, not N times that.  When it ends, ``best_model.keras`` is the
    best trial's model.
    """
    import optuna
    from optuna.trial import TrialState

    for name in cfg.space.backbones:  # fail at start-up, not in trial 17
        resolve_weights(registry.backbone(name), cfg.weights)
    cfg.run.claim(
        dataset, {**cfg.record, "space": cfg.space.model_dump(), "weights": cfg.weights.describe()}
    )
    study = open_search_study(cfg)
    cfg.artifacts = _artifact_store(study, cfg)
    cfg.run.artifact_store(cfg.artifacts)  # reachable, or one line now rather than after a trial
    _describe_study(study, cfg, dataset)
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    emit = on_event or (lambda _e: None)
    emit(
        {
            "start": True,
            "done": len(study.get_trials(deepcopy=False, states=counted)),
            "total": cfg.trials,
        }
    )
    runner = _TrialRunner(cfg, registry, dataset, emit)
    if len(study.get_trials(deepcopy=False, states=counted)) < cfg.trials:
        runner.prepare(should_stop)
    callbacks = [
        _after_trial(cfg, runner.store),
        lambda s, t: emit(
            {
                "finished": t.number,
                "state": t.state.name,
                "value": t.value if t.values and len(t.values) == 1 else None,
            }
        ),
    ]
    started = time.monotonic()
    try:
        while not should_stop():
            if cfg.timeout is not None and time.monotonic() - started > cfg.timeout:
                break
            trials = study.get_trials(
                deepcopy=False, states=(*counted, TrialState.RUNNING, TrialState.WAITING)
            )
            done = sum(t.state in counted for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if done >= cfg.trials:
                break
            if waiting or done + running < cfg.trials:
                if not waiting:
                    _enqueue_finalist(
                        study, cfg.space, trials
                    )  # a two-stage search past its screening
                study.optimize(runner, n_trials=1, catch=(TrialFailed,), callbacks=callbacks)
            else:  # the others' running trials may fill the budget; wait in case one of them dies
                time.sleep(min(5.0, cfg.heartbeat))
                optuna.storages.fail_stale_trials(
                    study
                )  # a dead worker's trial: failed, and queued again
                # (optimize() does this itself before each trial it runs)
    finally:
        best = ranked_trials(study)[:1]
        if best and cfg.run.best_trial_number() != best[0].number:
            emit({"tensorflow": True})  # the best model is assembled now
        try:
            update_best_model(cfg.run, study, registry, cfg.weights, cfg.storage_url, runner.base)
        except LayersNotHere as exc:  # the work is done and saved; this machine cannot show it
            emit({"warning": f"best_model.keras not assembled here: {exc}"})
    return study
