"""The Optuna engine: what to try.  The trainer (``autotl.train``) decides how.

One study per run folder.  It lives in a SQLite file there by default; any
Optuna storage URL (PostgreSQL for many workers) works.  Rerunning the same
search resumes: finished trials are kept and only the missing ones run,
because the trial budget counts complete and pruned trials in the study, not
trials of this process.  The sampler is the space's (``sampler``), the
objectives and constraints are the space's (``objectives``, ``constraints``),
and every "best" is :func:`autotl.objective.ranked_trials`' order.

When an objective or a constraint is a deploy cost (``latency_ms``,
``size_mb``, ``params``), each trial's costs are looked up (measured once per
backbone and head shape, :mod:`autotl.deploy_costs`) before it trains and
recorded in its metrics.  Its constraint values go to the trial's
``constraints`` attribute and to Optuna (``trial.set_constraint`` on Optuna 5,
the sampler's ``constraints_func`` on Optuna 4).
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from autotl.errors import TrialFailed, UsageError, first_line
from autotl.objective import DEPLOY, Objectives, ranked_trials, trial_metrics
from autotl.registry import Registry
from autotl.runfolder import RunFolder
from autotl.space import SearchSpace, trial_params
from autotl.trial_models import record_artifact, update_best_model
from autotl.weights import WeightsSource, resolve_weights

__all__ = ["SearchConfig", "open_search_study", "run_search", "FULL", "SCREEN", "FINALIST"]

Event = Callable[[dict[str, Any]], None]
#: A trial's stage (user attribute ``stage``): an ordinary trial, a screening trial (phase 1 only),
#: or a finalist's fine-tuning trial (see ``screening`` in the search space).
FULL, SCREEN, FINALIST = "full", "screen", "finalist"
#: The trial attribute holding its constraint values (``<= 0``: met), as Optuna's ``constraints_func`` reads them.
CONSTRAINTS_ATTR = "constraints"


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
    # measures a shape's deploy costs: autotl.deploy_costs.measure_deploy_costs (the API passes it)
    deploy_costs: Optional[Callable[..., dict[str, float]]] = None

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.out)

    @property
    def storage_url(self) -> str:
        return self.run.storage_url(self.storage)

    @property
    def objectives(self) -> Objectives:
        return Objectives.of(self.space.objectives, self.space.constraints)

    @property
    def prunes(self) -> bool:
        """Optuna prunes single-objective studies only; and a pruned trial must still have its
        constraint values, which only the deploy costs (known before training) have."""
        objectives = self.objectives
        return len(objectives) == 1 and all(
            c.objective.kind == DEPLOY for c in objectives.constraints
        )


def _trial_sets_constraints() -> bool:
    """Optuna 5 takes constraint values from the trial (``trial.set_constraint``); Optuna 4 from the
    sampler's ``constraints_func`` (deprecated in 5)."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def _constraints_func(n: int) -> Callable[[Any], list[float]]:
    """Optuna 4's ``constraints_func``: the values the trial recorded (``inf``, not met, if it recorded none)."""

    def constraints(trial: Any) -> list[float]:
        found = trial.user_attrs.get(CONSTRAINTS_ATTR)
        return [float(v) for v in found] if found else [math.inf] * n

    return constraints


def open_search_study(cfg: SearchConfig) -> Any:
    """Create or resume the study with the space's objectives, sampler and pruner.

    A resumed study, or another worker, must not draw the same points again:
    the sampler's seed is offset by the trials already there and by the
    worker's index.  Pruning acts on one step axis across both phases (phase-2
    epochs are steps ``phase1.epochs + e``), after a warm-up that covers phase 1;
    Optuna prunes single-objective studies only, so several objectives turn it
    off (and so does a constraint on a validation metric: see ``prunes``).  A
    study made for other objectives or constraints is refused in one line.
    """
    import optuna

    from autotl.samplers import make_sampler
    from autotl.storage import open_study

    objectives = cfg.objectives
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=cfg.space.phase1.epochs)
        if cfg.prunes
        else optuna.pruners.NopPruner()
    )
    study = open_study(
        cfg.storage_url,
        cfg.study_name,
        directions=objectives.directions,
        pruner=pruner,
        heartbeat=cfg.heartbeat,
    )
    _check_same_objectives(study, objectives, cfg.storage_url)
    offset = len(study.get_trials(deepcopy=False)) + 1000 * cfg.worker_index
    constraints = (
        _constraints_func(len(objectives.constraints))
        if objectives.constraints and not _trial_sets_constraints()
        else None
    )
    study.sampler = make_sampler(
        cfg.space.sampler, cfg.space.seed + offset, len(objectives), constraints
    )
    return study


def _check_same_objectives(study: Any, objectives: Objectives, storage_url: str) -> None:
    """A resumed study keeps its objectives and constraints: its trials' values and constraint values mean them."""
    from autotl.storage import safe_url

    attrs = study.user_attrs
    for key, have, want in (
        ("objectives", attrs.get("objectives"), objectives.names),
        ("constraints", attrs.get("constraints"), objectives.constraint_bounds()),
    ):
        if have is not None and study.get_trials(deepcopy=False) and have != want:
            raise UsageError(
                f"study {study.study_name!r} in {safe_url(storage_url)} was searched with {key} {have}, "
                f"not {want}; pass another --out (or --study-name) for this search"
            )


def _record_constraints(trial: Any, objectives: Objectives, metrics: dict[str, float]) -> None:
    """The trial's constraint values (``<= 0``: met), once: in its ``constraints`` attribute, and for
    Optuna 5's samplers through ``trial.set_constraint``."""
    if not objectives.constraints:
        return
    values = objectives.constraint_values(metrics)
    trial.set_user_attr(CONSTRAINTS_ATTR, values)
    if _trial_sets_constraints():
        for c, v in zip(objectives.constraints, values):
            trial.set_constraint(c.objective.name, v)


class _TrialRunner:
    """The function Optuna calls for each trial: ask for a point, train it, record what happened."""

    def __init__(
        self, cfg: SearchConfig, registry: Registry, dataset: Any, on_event: Event
    ) -> None:
        from autotl.cache import FeatureCache

        self.cfg, self.registry, self.dataset, self.on_event = cfg, registry, dataset, on_event
        self.cache = FeatureCache(cfg.run.cache_dir)
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
        costs = self._deploy_costs(trial, spec, weights, params, event)
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
        metrics = {**result.attrs()["metrics"], **costs}
        for key, value in {**result.attrs(), "metrics": metrics}.items():
            trial.set_user_attr(key, value)
        if not self._constraints_known_early:
            _record_constraints(trial, self.cfg.objectives, metrics)
        trial.set_user_attr("seconds_total", time.perf_counter() - start)
        if self._worth_keeping(trial, metrics):
            # Only what the trial trained is stored (milliseconds); the full model is assembled on demand.
            trial.set_user_attr(
                "weights_path",
                self.cfg.run.save_trial_layers(trial.number, result.trained_weights()),
            )
        values = self.cfg.objectives.values(metrics)
        return values[0] if len(values) == 1 else values

    def _deploy_costs(
        self, trial: Any, spec: Any, weights: Any, params: Any, event: dict[str, Any]
    ) -> dict[str, float]:
        """The trial's deploy costs when an objective or constraint needs them (else ``{}``), recorded
        before it trains, so a pruned trial has them and its constraint values too."""
        objectives = self.cfg.objectives
        if not objectives.needs_deploy_costs:
            return {}
        if self.cfg.deploy_costs is None:
            raise UsageError(
                "this search's objectives or constraints need deploy costs: pass "
                "SearchConfig(deploy_costs=autotl.deploy_costs.measure_deploy_costs)"
            )
        self.on_event({**event, "status": "deploy costs"})
        try:
            costs = self.cfg.deploy_costs(
                self.cfg.run,
                spec,
                weights,
                lambda: self.base(spec, weights, params.seed),
                params.head_width,
                len(self.dataset.class_names),
                self.cfg.space.deploy.model_dump(),
            )
        except UsageError:
            raise
        except Exception as exc:  # a model that cannot be converted or timed fails this trial only
            reason = f"deploy costs not measured: {first_line(exc)[:200]}"
            trial.set_user_attr("fail_reason", reason)
            self.on_event({**event, "failed": reason})
            raise TrialFailed(reason) from None
        trial.set_user_attr("metrics", costs)
        if self._constraints_known_early:
            _record_constraints(trial, objectives, costs)
        return costs

    @property
    def _constraints_known_early(self) -> bool:
        """Whether every constraint is on a deploy cost, so its values are known before training."""
        constraints = self.cfg.objectives.constraints
        return bool(constraints) and all(c.objective.kind == DEPLOY for c in constraints)

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
            if not self.cfg.prunes:  # Optuna prunes single-objective studies only
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
        pairs = [(trial_metrics(t), t.number) for t in ranked] + [(metrics, trial.number)]
        keys = self.cfg.objectives.keys(pairs)
        return sum(k < keys[-1] for k in keys[:-1]) < self.cfg.keep_models


def _after_trial(cfg: SearchConfig) -> Callable[[Any, Any], None]:
    """Record the finished trial's lineage; drop the stored layers of trials out of the ``keep_models`` best."""

    def callback(study: Any, trial: Any) -> None:
        stored = cfg.run.trial_layers(trial)
        if trial.state.name == "COMPLETE" and stored is not None:
            record_artifact(cfg.storage_url, study, trial, stored, "trial_weights")
        for t in ranked_trials(study)[cfg.keep_models :]:
            cfg.run.drop_trial(t.number)

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


def _describe_study(study: Any, cfg: SearchConfig, dataset: Any) -> None:
    """What reports and exports read from the study itself (any worker may write it; the values are the same)."""
    from autotl.lineage import library_versions

    attrs = {
        "data": dataset.summary(),
        "class_names": list(dataset.class_names),
        "space": cfg.space.model_dump(),
        "objectives": cfg.objectives.names,
        "constraints": cfg.objectives.constraint_bounds(),
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
    callbacks = [
        _after_trial(cfg),
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
        update_best_model(cfg.run, study, registry, cfg.weights, cfg.storage_url, runner.base)
    return study
