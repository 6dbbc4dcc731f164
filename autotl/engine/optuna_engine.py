"""The Optuna engine: what to try.  The trainer (``autotl.training.trainer``) decides how.

One study per run folder.  It lives in a SQLite file there by default; any
Optuna storage URL (PostgreSQL for many workers) works.  Rerunning the same
search resumes: finished trials are kept and only the missing ones run,
because the trial budget counts complete and pruned trials in the study, not
trials of this process.  The sampler is the space's (``sampler``), the
objectives and constraints are the space's (``objectives``, ``constraints``),
and every "best" is :func:`autotl.scoring.objective.ranked_trials`' order.

Failures follow :mod:`autotl.engine.failures`: a trial that raises anything is
marked failed with its reason and the search goes on; a backbone that fails
three times in a row is dropped (the sampler is kept off it), and the search
stops with :class:`autotl.errors.SearchStopped` when no backbone is left or
``max_failures`` trials in a row have failed.  Before the first trial every
backbone is checked once (:mod:`autotl.engine.prechecks`) and, with two or more,
screened on a sample (:mod:`autotl.engine.backbone_screen`); the kept backbones'
full feature caches are built one at a time between trials, and
``best_model.keras`` is assembled whenever a trial becomes the best.

When an objective or a constraint is a deploy cost (``latency_ms``,
``size_mb``, ``params``), each trial's costs are looked up (measured once per
backbone and head shape, :mod:`autotl.export._deploy_costs`) before it trains and
recorded in its metrics.  Its constraint values go to the trial's
``constraints`` attribute and to Optuna (``trial.set_constraint`` on Optuna 5,
the sampler's ``constraints_func`` on Optuna 4).
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional

from autotl.backbones.registry import Registry
from autotl.backbones.weights import WeightsSource, resolve_weights
from autotl.engine.backbone_screen import FullCaches, clock, estimate_seconds, sample_images
from autotl.engine.depth import DEPTH_ATTR, DEPTH_PROBE, widened_high
from autotl.engine.failures import (
    COUNTED,
    FAIL_KIND,
    FAIL_REASON,
    MAX_FAILURES,
    SESSION,
    SKIPPED,
    SURPLUS,
    LiveSampler,
    SearchBackbones,
    stop_reason,
)
from autotl.engine.space import Distributions, SearchSpace, trial_params
from autotl.errors import SearchStopped, TrialFailed, UsageError, failure_line, first_line
from autotl.run.folder import RunFolder
from autotl.run.trial_models import LayersNotHere, record_artifact, update_best_model
from autotl.scoring.objective import DEPLOY, Objectives, ranked_trials, trial_metrics
from autotl.training.cache import BuildStopped

__all__ = ["SearchConfig", "open_search_study", "run_search", "FULL", "SCREEN", "FINALIST"]

Event = Callable[[dict[str, Any]], None]
#: A trial's stage (user attribute ``stage``): an ordinary trial, a two-stage search's phase-1-only
#: trial, or a finalist's fine-tuning trial (see ``two_stage`` in the search space).
FULL, SCREEN, FINALIST = "full", "screen", "finalist"
#: The trial attribute holding its constraint values (``<= 0``: met), as Optuna's ``constraints_func`` reads them.
CONSTRAINTS_ATTR = "constraints"
#: The trial attribute holding the seed it trained with, which a refit (:mod:`autotl.engine.refit`) replays.
SEED_ATTR = "seed"


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
    max_failures: int = MAX_FAILURES  # stop after this many failed trials in a row
    # one `autotl search` and the workers it started: "in a row" counts its trials (autotl.engine.failures)
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    unavailable: dict[str, str] = field(default_factory=dict)  # backbone -> why it is left out
    explicit: bool = False  # the backbones were named (--backbone): each must be usable
    # measures a shape's deploy costs: autotl.export._deploy_costs.measure_deploy_costs (the API passes it)
    deploy_costs: Optional[Callable[..., dict[str, float]]] = None
    # the feature cache: its folder (default RUN_DIR/cache), the bytes it may hold (default: the
    # disk's free space), its dtype, and its forward pass in float16 (a GPU option)
    cache_dir: Optional[Path] = None
    cache_budget: Optional[int] = None
    cache_dtype: str = "float16"
    mixed_precision: bool = False
    # the artifact store (default: the one the study records, else RUN_DIR/artifacts)
    artifacts: Optional[str] = None
    # called with the feature cache once it holds every backbone's features, before the first trial
    # (the API checks the data for leakage there)
    before_trials: Optional[Callable[..., None]] = (
        None  # (cache, backbone whose full cache is ready)
    )

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

    from autotl.engine.samplers import make_sampler
    from autotl.run.storage import open_study

    objectives = cfg.objectives
    pruner = _pruner(cfg.space.phase1.epochs) if cfg.prunes else optuna.pruners.NopPruner()
    study = open_study(
        cfg.storage_url,
        cfg.study_name,
        directions=objectives.directions,
        pruner=pruner,
        heartbeat=cfg.heartbeat,
    )
    _check_same_objectives(study, objectives, cfg.storage_url)
    offset = len(study.get_trials(deepcopy=False)) + 1000 * cfg.worker_index
    seed = (cfg.space.seed + offset) % 2**32  # samplers take 0 .. 2**32 - 1
    constraints = (
        _constraints_func(len(objectives.constraints))
        if objectives.constraints and not _trial_sets_constraints()
        else None
    )
    study.sampler = make_sampler(cfg.space.sampler, seed, len(objectives), constraints)
    return study


def _pruner(warmup: int) -> Any:
    """Optuna's median pruner, after a warm-up that covers phase 1, sparing the depth probes.

    A probe (:mod:`autotl.engine.depth`) fine-tunes deeper than any trial before it: its first
    epochs of fine-tuning lag the shallow trials' (more layers moving at a low rate) and the median
    rule cut both probes of a digits search after one epoch (``benchmarks/depth.py``, seed 1), so
    the widening brought no evidence from deep.  Probes still report, and other trials are judged
    against them.
    """
    import optuna

    class SparingProbes(optuna.pruners.MedianPruner):
        def prune(self, study: Any, trial: Any) -> bool:
            return DEPTH_PROBE not in trial.user_attrs and bool(super().prune(study, trial))

    return SparingProbes(n_startup_trials=3, n_warmup_steps=warmup)


def _check_same_objectives(study: Any, objectives: Objectives, storage_url: str) -> None:
    """A resumed study keeps its objectives and constraints: its trials' values and constraint values mean them."""
    from autotl.run.storage import safe_url

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
        self,
        cfg: SearchConfig,
        registry: Registry,
        dataset: Any,
        on_event: Event,
        backbones: SearchBackbones,
    ) -> None:
        from autotl.training.cache import FeatureCache

        self.cfg, self.registry, self.dataset, self.on_event = cfg, registry, dataset, on_event
        self.backbones = backbones
        self.cache = FeatureCache(
            cfg.cache_dir or cfg.run.cache_dir,
            cfg.cache_dtype,
            cfg.cache_budget,
            cfg.mixed_precision,
            warn=lambda msg: on_event({"warning": msg}),
        )
        self.store = cfg.run.artifact_store(cfg.artifacts)
        self._bases: dict[tuple[Any, ...], tuple[Any, list[Any]]] = {}
        self.full: Optional[FullCaches] = None  # the kept backbones' full caches (``prepare``)

    def adopt(self, spec: Any, weights: Any, seed: int, base: Any) -> None:
        """Use ``base`` (built and checked at start-up) as this process's base for ``spec``."""
        self._bases[(spec.name, weights.argument, weights.sha256, seed)] = (
            base,
            base.get_weights(),
        )

    def base(self, spec: Any, weights: Any, seed: int) -> Any:
        """This process's base for ``spec``: built once, reset to its pretrained weights before each use.

        Building a base costs a second or more (ResNet50: several); a trial
        only needs one with the pretrained weights, which a reset restores.
        """
        from autotl.training.model import build_base

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
        from optuna import TrialPruned
        from optuna.trial import TrialState

        trial.set_user_attr(SESSION, self.cfg.session)
        live = trial.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        earlier = [t for t in live if t.number < trial.number]
        if len(earlier) >= self.cfg.trials:  # another worker got there first
            self._fail(
                trial,
                {},
                SURPLUS,
                "surplus: other workers had already taken the whole trial budget",
            )
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        stage = trial.user_attrs.get("stage") or self._stage(earlier)
        trial.set_user_attr("stage", stage)
        params = trial_params(
            trial, self.cfg.space, screen=stage == SCREEN, deepest=widened_high(trial.study)
        )
        event = {"trial": trial.number, "backbone": params.backbone}
        if (
            params.backbone not in self.backbones.live()
        ):  # a queued trial (a retry, a finalist) of one gone
            self._fail(trial, event, SKIPPED, f"skipped: {self.backbones.why_not(params.backbone)}")
        try:
            return self._train(trial, params, event)
        except TrialPruned:
            raise
        except (
            UsageError
        ) as exc:  # a user's mistake stops the search (Optuna marks the trial failed)
            trial.set_user_attr(FAIL_REASON, first_line(exc))
            raise
        except TrialFailed as exc:
            reason = str(exc)
        except Exception as exc:  # whatever a plugin or a library raises inside a trial
            reason = failure_line(exc)
        self._fail(trial, event, COUNTED, reason)

    def _fail(self, trial: Any, event: dict[str, Any], kind: str, reason: str) -> NoReturn:
        """Record why ``trial`` failed (and whether it counts, see :mod:`autotl.engine.failures`), say it, fail it."""
        trial.set_user_attr(FAIL_KIND, kind)
        trial.set_user_attr(FAIL_REASON, reason)
        if event:
            self.on_event({**event, "failed": reason})
        raise TrialFailed(reason)

    def _train(self, trial: Any, params: Any, event: dict[str, Any]) -> Any:
        """Train one point and record what it did; the value(s) Optuna gets."""
        from autotl.training.trainer import train_trial

        spec = self.registry.backbone(params.backbone)
        weights = resolve_weights(spec, self.cfg.weights)
        for key, value in (
            ("weights_sha256", weights.sha256),
            ("weights_origin", weights.origin),
            ("plugin", spec.plugin),
            (SEED_ATTR, params.seed),
        ):
            trial.set_user_attr(key, value)
        start = time.perf_counter()
        costs = self._deploy_costs(trial, spec, weights, params, event)
        result = train_trial(
            spec=spec,
            params=params,
            make_base=lambda: self.base(spec, weights, params.seed),
            dataset=self.dataset,
            cache=self.cache,
            weights=weights,
            report=self._reporter(trial, params, event),
            progress=lambda msg: self.on_event({**event, "status": msg}),
            augmentation=self.cfg.space.augmentation,
        )
        metrics = {**result.attrs()["metrics"], **costs}
        for key, value in {**result.attrs(), "metrics": metrics}.items():
            trial.set_user_attr(key, value)
        if not self._constraints_known_early:
            _record_constraints(trial, self.cfg.objectives, metrics)
        trial.set_user_attr("seconds_total", time.perf_counter() - start)
        if self._worth_keeping(trial, metrics):
            self._store_layers(trial, result)
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
                "SearchConfig(deploy_costs=autotl.export._deploy_costs.measure_deploy_costs)"
            )
        self.on_event({**event, "status": "deploy costs"})
        try:
            costs = self.cfg.deploy_costs(
                run=self.cfg.run,
                spec=spec,
                weights=weights,
                make_base=lambda: self.base(spec, weights, params.seed),
                head_width=params.head_width,
                n_classes=len(self.dataset.class_names),
                settings=self.cfg.space.deploy.model_dump(),
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

    def _store_layers(self, trial: Any, result: Any) -> None:
        """Only what the trial trained is stored (milliseconds), here and in the artifact store; the full
        model is assembled on demand, on any machine that reaches the store."""
        from autotl.run.artifacts import upload

        relative = self.cfg.run.save_trial_layers(trial.number, result.trained_weights())
        trial.set_user_attr("weights_path", relative)
        try:
            artifact_id = upload(self.store, trial, self.cfg.run.path / relative)
        except Exception as exc:  # the store is down: other machines could not assemble this trial
            raise TrialFailed(
                f"cannot store the trial's layers in the artifact store: {exc}"
            ) from exc
        trial.set_user_attr("layers_artifact", artifact_id)

    def prepare(self, should_stop: Callable[[], bool], deadline: Optional[float] = None) -> None:
        """Before the first trial: screen the backbones on a sample (when the space says so), then plan
        the kept backbones' full caches (:class:`autotl.engine.backbone_screen.FullCaches`), which
        :meth:`build_due` builds one at a time between trials.  A build that fails -- a full disk,
        say -- leaves the study without a failed trial.  Workers start from different backbones."""
        names = [b for b in self.cfg.space.backbones if b in self.backbones.live()]
        estimates: dict[str, Optional[float]] = {}
        if self.cfg.space.backbone_screening.active(len(names)):
            decision = self._screen(names, should_stop)
            if decision is None:  # stopped during the sample stage
                return
            for name in names:
                if name not in decision["kept"]:
                    why = decision["reasons"].get(
                        name, "not available when this study's screening decided"
                    )
                    self.backbones.skipped[name] = f"screened out: {why}"
            names = [b for b in names if b in decision["kept"]]
            # the bases of the backbones left out are not needed again: their memory goes back
            self._bases = {k: v for k, v in self._bases.items() if k[0] in names}
            estimates = decision.get("estimates", {})
        self.full = FullCaches(
            names,
            estimates,
            lambda name, stop: self._features(name, stop=stop),
            self.on_event,
            deadline,
            sizes={key[0]: base.count_params() for key, (base, _w) in self._bases.items()},
        )
        self.full.rotate(self.cfg.worker_index)
        self.backbones.waiting = set(names)

    def build_due(
        self, trials_done: int, should_stop: Callable[[], bool], before: Callable[[], None]
    ) -> None:
        """Build the next kept backbone's full cache when it is due (none ready yet, or a trial since the
        last), calling ``before()`` first (the best model so far is assembled then)."""
        full = self.full
        if full is not None and full.due(trials_done) and trials_done:
            before()
        while full is not None and full.due(trials_done) and not should_stop():
            name = full.next(should_stop)
            self.backbones.skipped.update(full.refused)
            self.backbones.waiting = set(full.pending)
            if name is not None or not full.ready:
                return

    def _screen(
        self, names: list[str], should_stop: Callable[[], bool]
    ) -> Optional[dict[str, Any]]:
        """The sample stage: each backbone's sample scores (stored as soon as each exists, never computed twice
        for a study), after the pilot rung's cut when the space has one, then the decision, stored once for
        every worker; None if stopped before it."""
        from autotl.engine.backbone_screen import (
            DECISION_KEY,
            PILOT_DECISION_KEY,
            PILOT_KEY,
            RESULT_KEY,
            decide,
            decide_pilot,
            pilot_of,
            sample_of,
        )
        from autotl.run.stages import claim, read_all

        url, study, rule = (
            self.cfg.storage_url,
            self.cfg.study_name,
            self.cfg.space.backbone_screening,
        )
        stored = read_all(url, study)
        if DECISION_KEY in stored:
            return self._say_decision(stored[DECISION_KEY], resumed=True)
        sample = sample_of(self.dataset, self.cfg.space)
        pilot = pilot_of(self.dataset, self.cfg.space, sample)
        self._say_stage(names, sample, pilot)
        on, dropped = names, {}
        if pilot is not None:
            scores = self._rung(names, pilot, PILOT_KEY, stored, should_stop)
            if scores is None:
                return None
            cut = claim(url, study, PILOT_DECISION_KEY, decide_pilot(scores, rule))
            on = [n for n in names if n in cut["kept"]]
            dropped = {n: why for n, why in cut["reasons"].items() if n not in cut["kept"]}
        results = self._rung(on, sample, RESULT_KEY, stored, should_stop)
        if results is None:
            return None
        decision = decide(results, rule)
        decision["reasons"].update(dropped)
        images = len(self.dataset.train) + len(self.dataset.val)
        decision["estimates"] = {
            n: (0.0 if sample is self.dataset else estimate_seconds(results[n], images))
            for n in decision["kept"]
        }
        decision["sample_images"] = len(sample.train) + len(sample.val)
        return self._say_decision(claim(url, study, DECISION_KEY, decision), resumed=False)

    def _say_stage(self, names: list[str], sample: Any, pilot: Any) -> None:
        size = len(sample.train) + len(sample.val)
        where = (
            f"all {size:,} images (no more than the sample's {self.cfg.space.backbone_screening.sample:,}: "
            "these caches are the full ones)"
            if sample is self.dataset
            else f"a stratified sample of {size:,} images"
        )
        if pilot is not None:
            where += f", after a pilot of {len(pilot.train) + len(pilot.val):,}"
        self.on_event({"info": f"backbone screening: {len(names)} backbones on {where}"})

    def _rung(
        self,
        names: list[str],
        data: Any,
        prefix: str,
        stored: dict[str, Any],
        should_stop: Callable[[], bool],
    ) -> Optional[dict[str, dict[str, Any]]]:
        """Each of ``names``' scores on ``data`` (read from ``stored`` under ``prefix``, or computed and
        stored there at once); workers start from different backbones.  None if stopped."""
        from autotl.run.stages import claim

        url, study = self.cfg.storage_url, self.cfg.study_name
        k = self.cfg.worker_index % max(len(names), 1)
        results = {n: stored[prefix + n] for n in names if prefix + n in stored}
        for name in names[k:] + names[:k]:
            if name in results:
                continue
            if should_stop():
                return None
            try:
                result = self._sample_result(name, data, should_stop)
            except BuildStopped:  # Ctrl-C: this backbone's sample is built again on resume
                return None
            results[name] = claim(url, study, prefix + name, result)
            self._say_result(name, results[name])
        return {n: results[n] for n in names}

    def _sample_result(self, name: str, sample: Any, stop: Callable[[], bool]) -> dict[str, Any]:
        """One backbone's sample scores and measured cost, or ``{"error": reason}``."""
        from autotl.engine.backbone_screen import score_features

        started = time.perf_counter()
        try:
            feats = self._features(name, sample, stop)
            result = score_features(feats, self.cfg.space, len(self.dataset.class_names))
        except (UsageError, KeyboardInterrupt, BuildStopped):
            raise
        except Exception as exc:  # a backbone's own fault: dropped, with the reason
            return {"error": failure_line(exc)}
        stats = feats.stats or {}
        result.update(
            images_per_second=stats.get("images_per_second"),
            cache_seconds=stats.get("seconds"),
            seconds=round(time.perf_counter() - started, 3),
        )
        return result

    def _say_result(self, name: str, r: dict[str, Any]) -> None:
        if "error" in r:
            self.on_event({"info": f"  {name}: failed on the sample: {r['error']}", "sample": name})
            return
        self.on_event(
            {
                "info": f"  {name}: accuracy {r['accuracy']:.3f} on {sample_images(r):,} "
                f"images, LogME {r['logme']:.3f}, {r.get('images_per_second') or 0:,.0f} img/s",
                "sample": name,
            }
        )

    def _say_decision(self, decision: dict[str, Any], resumed: bool) -> dict[str, Any]:
        from autotl.engine.backbone_screen import clock

        kept = ", ".join(
            f"{n} (full cache about {clock(e)})" if e else n
            for n, e in ((n, decision.get("estimates", {}).get(n)) for n in decision["kept"])
        )
        left = "; ".join(
            f"{n} ({why.removeprefix('dropped: ')})"
            for n, why in decision["reasons"].items()
            if n not in decision["kept"]
        )
        when = "decided earlier in this study" if resumed else "decided"
        self.on_event(
            {
                "info": f"backbone screening {when}: on to all the data: {kept}"
                + (f"; left out: {left}" if left else "")
            }
        )
        return decision

    def _features(
        self, name: str, data: Any = None, stop: Callable[[], bool] = lambda: False
    ) -> Any:
        """Backbone ``name``'s phase-1 cache entry on ``data`` (default: all of it), and on all of it the
        boundaries the space may fine-tune from, as a trial builds them."""
        import optuna

        from autotl.training.trainer import prefetch_cuts

        data = self.dataset if data is None else data
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
        where = "full cache" if data is self.dataset else "sample"
        return self.cache.get(
            spec,
            lambda: self.base(spec, weights, params.seed),
            weights,
            data,
            None,
            batch_size=params.batch_size,
            augmentation=space.augmentation,
            seed=params.seed,
            prefetch=(lambda b: prefetch_cuts(spec, params, b))
            if data is self.dataset
            else (lambda _b: ()),
            say=lambda msg: self.on_event({"status": f"{name} | {where}: {msg}", "backbone": name}),
            stop=stop,
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
            if not self.cfg.prunes:  # Optuna prunes single-objective studies only
                return
            trial.report(value, step)
            # phase 1 is the pruner's warm-up (``_pruner``): asking would read every trial to say no
            if phase == 2 and trial.should_prune():
                trial.set_user_attr("pruned_at", {"phase": phase, "step": step})
                raise optuna.TrialPruned(f"pruned at step {step}")

        return report

    def _stage(self, earlier: list[Any]) -> str:
        """Phase 1 only while the two-stage search's first trials among ``earlier`` (live trials before
        this one) leave room; finalists come enqueued."""
        screening = self.cfg.space.two_stage
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


def _after_trial(cfg: SearchConfig, store: Any, best: _BestSoFar) -> Callable[[Any, Any], None]:
    """Record the finished trial's lineage; tell ``best``; drop the stored layers of trials out of the
    ``keep_models`` best (here and in the artifact store, once per process)."""
    from autotl.run.artifacts import remove

    removed: set[str] = set()

    def callback(study: Any, trial: Any) -> None:
        stored = cfg.run.trial_layers(trial)
        if trial.state.name == "COMPLETE" and stored is not None:
            record_artifact(cfg.storage_url, study, trial, stored, "trial_weights")
        ranked = ranked_trials(study)
        best(study, trial, ranked)
        for t in ranked[cfg.keep_models :]:
            cfg.run.drop_trial(t.number)
            artifact_id = t.user_attrs.get("layers_artifact")
            if artifact_id and artifact_id not in removed:
                remove(store, artifact_id)
                removed.add(artifact_id)

    return callback


#: During a search, a new best trial's model is assembled once this many seconds have passed since the
#: search started or last assembled one (saving a model costs about 0.4 s for MobileNetV2 0.35, several
#: for bigger bases: a short search assembles only at its end); a waiting one is assembled before the
#: next full cache is built, and when the search ends.  A kill in between loses no trial: the best
#: trial's layers are stored, and ``Run.best_model()`` or a resume assembles it.
BEST_MODEL_INTERVAL = 60.0


class _BestSoFar:
    """``best_model.keras`` follows the search, so a search stopped at any time (``--timeout``, Ctrl-C,
    a kill) leaves the best model it found: assembled when a trial becomes the best (at most once every
    ``BEST_MODEL_INTERVAL`` seconds, so a short search is not slowed), before each full cache is built
    (minutes in which nothing else would do it), and when the search ends."""

    def __init__(self, cfg: SearchConfig, runner: _TrialRunner, emit: Event) -> None:
        self.cfg, self.runner, self.emit = cfg, runner, emit
        self.last = time.monotonic()

    def __call__(self, study: Any, trial: Any, ranked: list[Any]) -> None:
        """After ``trial`` (``ranked``: the study's trials, best first)."""
        if trial.state.name != "COMPLETE" or not ranked or ranked[0].number != trial.number:
            return
        if time.monotonic() - self.last >= BEST_MODEL_INTERVAL:
            self.flush(study)

    def flush(self, study: Any) -> None:
        """Make ``best_model.keras`` the best trial's now (a no-op when it already is)."""
        self.last = time.monotonic()
        try:
            update_best_model(
                self.cfg.run,
                study,
                self.runner.registry,
                self.cfg.weights,
                self.cfg.storage_url,
                self.runner.base,
            )
        except LayersNotHere as exc:  # kept elsewhere: assembled when the search ends
            self.emit({"warning": f"best_model.keras not assembled here yet: {exc}"})


def _finished_event(emit: Event) -> Callable[[Any, Any], None]:
    """The progress event of a finished trial: its state, value, and a failed one's reason."""

    def callback(study: Any, t: Any) -> None:
        emit(
            {
                "finished": t.number,
                "state": t.state.name,
                "value": t.value if t.values and len(t.values) == 1 else None,
                "reason": (t.user_attrs or {}).get(FAIL_REASON) if t.state.name == "FAIL" else None,
            }
        )

    return callback


def _enqueue_finalist(
    study: Any, space: SearchSpace, trials: list[Any], live: Sequence[str] = ()
) -> bool:
    """Queue the next fine-tuning trial of a two-stage search, once its screening is done; whether one was queued.

    Finalists are the best complete phase-1-only trials (by :func:`ranked_trials`'
    order) whose backbone is still ``live`` (all, if none is given), fine-tuned
    in turn; the sampler draws each one's unfreeze depth and fine-tuning rate.
    """
    screening = space.two_stage
    screened = [t for t in trials if t.user_attrs.get("stage") == SCREEN]
    if screening is None or len(screened) < screening.trials:
        return False
    numbers = {t.number for t in screened}
    finalists = [t for t in ranked_trials(study) if t.number in numbers][: screening.finalists]
    finalists = [t for t in finalists if not live or t.params.get("backbone") in live]
    if not finalists:  # every phase-1-only trial failed or was pruned: ordinary trials follow
        return False
    queued = sum(1 for t in trials if t.user_attrs.get("stage") == FINALIST)
    pick = finalists[queued % len(finalists)]
    fixed = {k: pick.params[k] for k in ("backbone", "head_width", "dropout")}
    study.enqueue_trial(
        fixed, user_attrs={"stage": FINALIST, "finalist_of": pick.number}, skip_if_exists=False
    )
    return True


def _deepen(study: Any, space: SearchSpace, runner: _TrialRunner, emit: Event) -> None:
    """Widen ``unfreeze_blocks`` once the trials call for it (:mod:`autotl.engine.depth`): record the
    decision in the study, say what the deeper boundaries will cost the cache, and queue the best
    trial at deeper depths."""
    from autotl.engine.depth import decide, probe_depths

    if space.phase2.deepen is None or widened_high(study) is not None:
        return
    ranked = ranked_trials(study)
    decision = decide(ranked, space)
    if decision is None:
        return
    # tried deeper: the trial whose fine-tuning gain decided it, else the best that drew a depth
    number = decision["evidence"].get("trial")
    best = next(
        t
        for t in ranked
        if t.number == number or (number is None and t.params.get("unfreeze_blocks") is not None)
    )
    decision["after_trial"] = max(t.number for t in ranked)
    decision["cost"] = _depth_cost(runner, best, decision["from"], decision["high"])
    decision["probes"] = probe_depths(decision["from"], decision["high"])
    study.set_user_attr(DEPTH_ATTR, decision)
    cost = decision["cost"]
    emit(
        {
            "info": f"fine-tuning depth widened to {space.phase2.unfreeze_blocks.low}..{decision['high']} "
            f"blocks: {decision['reason']}; {best.params['backbone']}'s {len(cost['cuts'])} deeper "
            f"boundaries take up to {cost['bytes'] / 1e6:,.0f} MB of cache"
            + (f" and about {clock(cost['seconds_each'])} each" if cost.get("seconds_each") else "")
            + ", each built when a trial first fine-tunes from it"
        }
    )
    fixed = {k: best.params[k] for k in ("backbone", "head_width", "dropout", "finetune_lr")}
    for blocks in decision["probes"]:
        study.enqueue_trial(
            {**fixed, "unfreeze_blocks": blocks},
            user_attrs={"stage": FULL, DEPTH_PROBE: best.number},
            skip_if_exists=True,
        )


def _depth_cost(runner: _TrialRunner, best: Any, old_high: int, new_high: int) -> dict[str, Any]:
    """The deeper boundaries' cache cost for the best trial's backbone: their bytes, and the seconds of
    one build at the rate its pooled features were cached (a deeper cut runs less of the base: at most that)."""
    from autotl.engine.depth import boundary_cost

    spec = runner.registry.backbone(best.params["backbone"])
    weights = resolve_weights(spec, runner.cfg.weights)
    base = runner.base(spec, weights, runner.cfg.space.seed)
    rows = len(runner.dataset.train) + len(runner.dataset.val)
    views = runner.cfg.space.augmentation
    rows += len(runner.dataset.train) * (views.views if views.enabled else 0)
    cost = boundary_cost(runner.cache, base, spec.block_pattern, old_high, new_high, rows)
    build = ((best.user_attrs.get("cache") or {}).get("phase1") or {}).get("build") or {}
    if build.get("images_per_second"):
        cost["seconds_each"] = round(rows / build["images_per_second"], 1)
    return cost


def _depth_time_up(study: Any, cfg: SearchConfig, trials: list[Any], emit: Event) -> bool:
    """Whether a widened search is at its time bound (``deepen.cost``): said, and recorded in the study."""
    from datetime import datetime

    from autotl.engine.depth import DEPTH_STOP, over_cost

    deepen, shallow = cfg.space.phase2.deepen, cfg.space.phase2.unfreeze_blocks
    if deepen is None or deepen.cost is None or widened_high(study) is None:
        return False
    over = over_cost(trials, shallow.high, cfg.trials, deepen.cost, datetime.now())
    if over is None:
        return False
    if DEPTH_STOP not in study.user_attrs:
        study.set_user_attr(DEPTH_STOP, over)
    emit(
        {
            "info": f"stopping after {over['trials']} of {cfg.trials} trials: they took "
            f"{clock(over['spent_seconds'])} and one more would pass the widened range's time bound, "
            f"{clock(over['bound_seconds'])} (deepen.cost {deepen.cost:g}x {cfg.trials} trials at the "
            f"{shallow.low}..{shallow.high} range's mean); deepen.cost: null runs them all"
        }
    )
    return True


def _artifact_store(study: Any, cfg: SearchConfig) -> Optional[str]:
    """The study's artifact store: the one it records (a worker given another is refused), else ``cfg.artifacts``."""
    from autotl.errors import UsageError
    from autotl.run.trial_models import ARTIFACTS_ATTR

    if ARTIFACTS_ATTR not in study.user_attrs:
        study.set_user_attr(ARTIFACTS_ATTR, cfg.artifacts)
        return cfg.artifacts
    recorded = study.user_attrs[ARTIFACTS_ATTR]
    if cfg.artifacts is not None and cfg.artifacts != recorded:
        from autotl.run.artifacts import describe

        raise UsageError(
            f"the study keeps its artifacts in {describe(recorded)}, not {cfg.artifacts}; "
            f"pass --artifacts {recorded or 'with the same value'} or leave it out"
        )
    return recorded


def _describe_study(study: Any, cfg: SearchConfig, dataset: Any) -> None:
    """What reports and exports read from the study itself (any worker may write it; the values are the same)."""
    from autotl.run.lineage import library_versions

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


def _check_resumable(study: Any, cfg: SearchConfig) -> dict[str, Any]:
    """The study's distributions by parameter; a space Optuna cannot mix with them is a UsageError.

    Optuna refuses, deep inside a trial, a categorical parameter whose choices
    changed (head widths edited in the space file between two runs); said at
    start-up it is one line.  The backbones are the exception: see :func:`_backbones_of`.
    """
    from optuna.distributions import check_distribution_compatibility

    seen: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        seen.update(t.distributions)
    recorder = Distributions()
    for screen in (False, True):
        trial_params(recorder, cfg.space, screen=screen)
    for name, new in recorder.distributions.items():
        if name == LiveSampler.PARAM or name not in seen:
            continue
        try:
            check_distribution_compatibility(seen[name], new)
        except ValueError:
            raise UsageError(
                f"the study in {cfg.run.path} searched {name} over {_shown(seen[name])}, and this space "
                f"asks for {_shown(new)}; Optuna cannot mix the two: restore the space, or pass another --out"
            ) from None
    return seen


def _shown(distribution: Any) -> str:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return str(list(choices))
    log = " (log)" if getattr(distribution, "log", False) else ""
    return f"{distribution.low}..{distribution.high}{log}"


def _backbones_of(study: Any, cfg: SearchConfig, emit: Event) -> SearchBackbones:
    """The backbones of this search in the study's choices (a resumed study keeps its own), and ``cfg.space`` to match.

    A backbone asked for that the study does not have is refused when named
    with ``--backbone``, else left out with a warning.
    """
    seen = _check_resumable(study, cfg)
    requested = list(cfg.space.backbones)
    found = seen.get(LiveSampler.PARAM)
    choices = [str(c) for c in found.choices] if found is not None else requested
    missing = [b for b in requested if b not in choices]
    if missing and (cfg.explicit or len(missing) == len(requested)):
        raise UsageError(
            f"the study in {cfg.run.path} searches the backbones {choices}, not {missing[0]!r}; "
            "pass another --out to search it"
        )
    for name in missing:
        emit(
            {
                "warning": f"skipping backbone {name!r}: the study in {cfg.run.path} searches {choices} "
                "(pass another --out to search it)"
            }
        )
    cfg.space = cfg.space.model_copy(update={"backbones": choices})
    return SearchBackbones(
        choices,
        {b: r for b, r in cfg.unavailable.items() if b in choices},
        {b for b in choices if b not in requested},
    )


def _start(cfg: SearchConfig, registry: Registry, dataset: Any, emit: Event) -> tuple[Any, Any]:
    """Claim the run folder, open the study, check each backbone once; ``(study, runner)``."""
    from autotl.engine.prechecks import precheck_backbones
    from autotl.run.storage import check_database

    check_database(cfg.storage_url, create=True)  # before anything is written into the folder
    # the feature cache, recorded so a refit (autotl.engine.refit) reads the activations the trials read
    cache = {
        "dir": str(Path(cfg.cache_dir or cfg.run.cache_dir).resolve()),
        "dtype": cfg.cache_dtype,
        "mixed_precision": cfg.mixed_precision,
    }
    record = {"space": cfg.space.model_dump(), "weights": cfg.weights.describe(), "cache": cache}
    cfg.run.claim(dataset, {**cfg.record, **record})
    study = open_search_study(cfg)
    cfg.artifacts = _artifact_store(study, cfg)
    cfg.run.artifact_store(cfg.artifacts)  # reachable, or one line now rather than after a trial
    backbones = _backbones_of(study, cfg, emit)
    p2 = cfg.space.phase2
    checked = precheck_backbones(
        run=cfg.run,
        registry=registry,
        names=[b for b in backbones.choices if b not in backbones.not_asked],
        source=cfg.weights,
        seed=cfg.space.seed,
        blocks=0 if p2.unfreeze_all else p2.deepest,
        explicit=cfg.explicit,
        emit=emit,
        skipped=backbones.skipped,
    )
    backbones.skipped.update(checked.skipped)
    study.sampler = LiveSampler(study.sampler, backbones, cfg.space.seed)
    _describe_study(study, cfg, dataset)
    runner = _TrialRunner(cfg, registry, dataset, emit, backbones)
    for name, base in checked.bases.items():
        spec = registry.backbone(name)
        runner.adopt(spec, resolve_weights(spec, cfg.weights), cfg.space.seed, base)
    return study, runner


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
    in total, not N times that.  Failed trials do not count toward it; the
    failure policy (:mod:`autotl.engine.failures`) ends a search that cannot make
    progress with :class:`SearchStopped`.  When it ends, ``best_model.keras``
    is the best trial's model.
    """
    from optuna.trial import TrialState

    emit = on_event or (lambda _e: None)
    study, runner = _start(cfg, registry, dataset, emit)
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    emit(
        {
            "start": True,
            "done": len(study.get_trials(deepcopy=False, states=counted)),
            "total": cfg.trials,
        }
    )
    started = time.monotonic()
    deadline = None if cfg.timeout is None else started + cfg.timeout
    if len(study.get_trials(deepcopy=False, states=counted)) < cfg.trials:
        runner.prepare(should_stop, deadline)
        if cfg.before_trials is not None and not should_stop():
            # the first kept backbone's full cache, which the check before the first trial reads
            runner.build_due(0, should_stop, lambda: None)
            ready = runner.full.ready if runner.full is not None else []
            if not should_stop():
                cfg.before_trials(runner.cache, ready[0] if ready else None)
    try:
        _loop(study, cfg, runner, emit, should_stop, deadline)
    finally:
        # the space's own sampler again, for whoever gets the study
        study.sampler = study.sampler.sampler
        try:
            update_best_model(cfg.run, study, registry, cfg.weights, cfg.storage_url, runner.base)
        except LayersNotHere as exc:  # the work is done and saved; this machine cannot show it
            emit({"warning": f"best_model.keras not assembled here: {exc}"})
    return study


def _loop(
    study: Any,
    cfg: SearchConfig,
    runner: _TrialRunner,
    emit: Event,
    should_stop: Callable[[], bool],
    deadline: Optional[float] = None,
) -> None:
    """Take trials until the budget is full, the time (``--timeout``, from the search's start) is up,
    Ctrl-C, or the failure policy says stop; kept backbones' full caches are built between trials."""
    import optuna
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    best = _BestSoFar(cfg, runner, emit)
    callbacks = [_after_trial(cfg, runner.store, best), _finished_event(emit)]
    while not should_stop():
        if deadline is not None and time.monotonic() > deadline:
            break
        everything = study.get_trials(deepcopy=False)
        trials = [
            t for t in everything if t.state in (*counted, TrialState.RUNNING, TrialState.WAITING)
        ]
        done = sum(t.state in counted for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if done >= cfg.trials:
            break
        runner.backbones.update(everything, cfg.session, emit)
        reason = stop_reason(
            everything,
            cfg.session,
            runner.backbones.live(),
            runner.backbones.reasons(),
            cfg.max_failures,
        )
        if reason is not None:
            raise SearchStopped(
                f"search stopped: {reason}; finished trials are kept: fix the cause and rerun the "
                "same command to resume"
            )
        if waiting or done + running < cfg.trials:
            runner.build_due(done, should_stop, lambda: best.flush(study))
            if should_stop() or (deadline is not None and time.monotonic() > deadline):
                break
            if not waiting:  # a two-stage search past its screening; a range that just widened
                _enqueue_finalist(study, cfg.space, trials, runner.backbones.live())
                _deepen(study, cfg.space, runner, emit)
            if _depth_time_up(study, cfg, everything, emit):
                break
            study.optimize(runner, n_trials=1, catch=(TrialFailed,), callbacks=callbacks)
        else:  # the others' running trials may fill the budget; wait in case one of them dies
            time.sleep(min(5.0, cfg.heartbeat))
            # a dead worker's trial: failed, and queued again (optimize() does this before each trial)
            optuna.storages.fail_stale_trials(study)
