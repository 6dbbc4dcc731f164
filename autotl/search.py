"""The Optuna study: what to try.  The trainer (``autotl.train``) decides how.

One study per run folder.  It lives in a SQLite file there by default; any
Optuna storage URL (PostgreSQL for many workers) works with ``--storage``.
Rerunning the same command resumes: finished trials are kept and only the
missing ones run, because the trial budget counts complete and pruned trials
in the study, not trials of this process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from autotl.errors import TrialFailed, UsageError, first_line
from autotl.registry import Registry
from autotl.rundir import default_storage_url
from autotl.space import SearchSpace
from autotl.storage import engine_kwargs
from autotl.train import TrialParams, train_trial
from autotl.weights import WeightsSource, resolve_weights

__all__ = ["SearchConfig", "open_study", "run_search", "trial_params", "ranked_trials", "best_trial", "rank_key", "BEST_MODEL", "CLASSES_FILE"]

BEST_MODEL = "best_model.keras"
BEST_MARKER = "best_model.json"
WEIGHTS_FILE = "trained_layers.npz"
MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.json"
Event = Callable[[dict[str, Any]], None]
#: A trial's stage (user attribute ``stage``): an ordinary trial, a screening trial (phase 1 only),
#: or a finalist's fine-tuning trial (see ``screening`` in the search space).
FULL, SCREEN, FINALIST = "full", "screen", "finalist"


@dataclass
class SearchConfig:
    out: Path
    space: SearchSpace
    trials: int
    weights: WeightsSource
    storage: Optional[str] = None
    study_name: str = "autotl"
    keep_models: int = 3
    timeout: Optional[float] = None
    data_summary: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    heartbeat: int = 30  # seconds; a worker silent for 4 heartbeats is declared dead

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage_url(self.out)


def open_study(storage_url: str, study_name: str = "autotl", seed: int = 0, warmup_steps: int = 0, create: bool = True, heartbeat: int = 30) -> Any:
    """Create or load the study; a storage that cannot be opened is a UsageError.

    Workers send a heartbeat every ``heartbeat`` seconds; a trial whose worker
    stayed silent for four of them is failed and queued again (Optuna's
    ``RetryHeartbeatStaleTrialCallback``), so a killed worker loses nothing.
    """
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # autotl says what failed, once, in its own words
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        if "://" not in storage_url:
            raise ValueError("not a URL")
        for attempt in range(5):  # workers starting together race to create the tables: the loser retries
            try:
                storage = RDBStorage(
                    storage_url, engine_kwargs=engine_kwargs(storage_url), heartbeat_interval=heartbeat, grace_period=4 * heartbeat,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
                break
            except Exception as exc:  # noqa: BLE001
                if "already exists" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.5 + attempt)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_steps)
        if not create:  # read it (reports, exports): no sampling
            return optuna.load_study(storage=storage, study_name=study_name, pruner=pruner)
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", pruner=pruner, load_if_exists=True)
        # A resumed study, or another worker, must not draw the same points again: offset the
        # seed by the trials already there and by the worker's index (set by --workers).
        offset = len(study.get_trials(deepcopy=False)) + 1000 * int(os.environ.get("AUTOTL_WORKER_INDEX", "0"))
        study.sampler = optuna.samplers.TPESampler(seed=seed + offset, n_startup_trials=5)
        return study
    except KeyError:
        raise UsageError(f"no study {study_name!r} in {storage_url}; check --study-name or run `autotl search` first") from None
    except ModuleNotFoundError as exc:
        raise UsageError(f"storage {storage_url} needs the Python package {exc.name!r}; install it (for PostgreSQL: pip install 'autotl[postgres]')") from None
    except Exception as exc:
        text = first_line(exc)
        raise UsageError(f"cannot open storage {storage_url!r} ({text}); pass a working Optuna storage URL such as sqlite:///study.db or postgresql://user:pass@host/db") from None


def trial_params(trial: Any, space: SearchSpace, stage: str = FULL) -> TrialParams:
    """Ask the trial (real, or ``optuna.trial.FixedTrial``) for one point of ``space``.

    A screening trial (``stage`` ``"screen"``) asks only for the backbone and
    head: it runs phase 1 alone, so it draws no fine-tuning settings.
    """
    p2 = space.phase2
    screen = stage == SCREEN
    return TrialParams(
        backbone=trial.suggest_categorical("backbone", list(space.backbones)),
        head_width=trial.suggest_categorical("head_width", list(space.head.width)),
        dropout=trial.suggest_float("dropout", space.head.dropout.low, space.head.dropout.high),
        unfreeze_blocks=0 if screen else trial.suggest_int("unfreeze_blocks", p2.unfreeze_blocks.low, p2.unfreeze_blocks.high),
        unfreeze_all=p2.unfreeze_all and not screen,
        finetune_lr=p2.learning_rate.low if screen else trial.suggest_float("finetune_lr", p2.learning_rate.low, p2.learning_rate.high, log=p2.learning_rate.log),
        phase1_lr=space.phase1.learning_rate,
        phase1_epochs=space.phase1.epochs,
        phase1_patience=space.phase1.patience,
        phase2_epochs=p2.epochs,
        phase2_patience=p2.patience,
        head_loss_threshold=space.phase1.head_loss_threshold,
        batch_size=space.batch_size,
        seed=space.seed,
        prefetch_blocks=0 if p2.unfreeze_all else p2.unfreeze_blocks.high,
    )


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class _Objective:
    def __init__(self, cfg: SearchConfig, registry: Registry, dataset: Any, on_event: Event) -> None:
        from autotl.cache import FeatureCache

        self.cfg, self.registry, self.dataset, self.on_event = cfg, registry, dataset, on_event
        self.cache = FeatureCache(cfg.out / "cache")
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
        base.set_weights(pristine)  # undo the last trial's fine-tuning (or the best model's assembly)
        return base

    def __call__(self, trial: Any) -> float:
        import optuna

        from autotl.model import save_layer_weights

        from optuna.trial import TrialState

        live = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        earlier = [t for t in live if t.number < trial.number]
        if len(earlier) >= self.cfg.trials:  # another worker got there first
            trial.set_user_attr("fail_reason", "surplus: other workers had already taken the whole trial budget")
            raise TrialFailed("surplus trial: the budget was already taken by other workers")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        stage = trial.user_attrs.get("stage") or self._stage(earlier)
        trial.set_user_attr("stage", stage)
        params = trial_params(trial, self.cfg.space, stage)
        spec = self.registry.backbone(params.backbone)
        weights = resolve_weights(spec, self.cfg.weights)
        trial.set_user_attr("weights_sha256", weights.sha256)
        trial.set_user_attr("weights_origin", weights.origin)
        trial.set_user_attr("plugin", spec.plugin)
        event = {"trial": trial.number, "backbone": spec.name}

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            phase = 1 if step < params.phase1_epochs else 2
            self.on_event({**event, "phase": phase, "epoch": step + 1 - (0 if phase == 1 else params.phase1_epochs), "val_accuracy": value})
            if trial.should_prune():
                trial.set_user_attr("pruned_at", {"phase": phase, "step": step})
                raise optuna.TrialPruned(f"pruned at step {step}")

        start = time.perf_counter()
        try:
            result = train_trial(spec, params, lambda: self.base(spec, weights, params.seed), self.dataset, self.cache, weights, report,
                                 lambda msg: self.on_event({**event, "status": msg}), self.cfg.space.augmentation)
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))
            self.on_event({**event, "failed": str(exc)})
            raise
        for key, value in result.attrs().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds_total", time.perf_counter() - start)
        if self._worth_keeping(trial, result.val_accuracy, result.val_loss):
            # Only what the trial trained is stored (milliseconds); the full model is assembled on demand.
            folder = self.cfg.out / "trials" / f"{trial.number:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            save_layer_weights(folder / WEIGHTS_FILE, result.trained_weights())
            trial.set_user_attr("weights_path", str((folder / WEIGHTS_FILE).relative_to(self.cfg.out)))
        return result.val_accuracy

    def _stage(self, earlier: list[Any]) -> str:
        """Screening while the screening trials among ``earlier`` (live trials before this one) leave room; finalists come enqueued."""
        screening = self.cfg.space.screening
        screened = sum(1 for t in earlier if t.user_attrs.get("stage") == SCREEN)
        return SCREEN if screening is not None and screened < screening.trials else FULL

    def _worth_keeping(self, trial: Any, value: float, val_loss: float) -> bool:
        """Whether this trial would rank among the ``keep_models`` best so far (same order as :func:`ranked_trials`)."""
        ranked = ranked_trials(trial.study)
        if len(ranked) < self.cfg.keep_models:
            return True
        kth = ranked[self.cfg.keep_models - 1]
        return rank_key(value, val_loss, trial.number) < rank_key(kth.value, kth.user_attrs.get("val_loss"), kth.number)


def _record(storage_url: str, study_name: str, trial: Any, path: Path, kind: str, data: Optional[dict] = None) -> None:
    """Lineage of a stored file in the study's database; it must never cost a finished trial."""
    from autotl.lineage import record_model

    try:
        record_model(storage_url, study_name, trial, path, kind, data=data)
    except Exception as exc:  # noqa: BLE001
        import warnings

        warnings.warn(f"lineage not recorded for {path}: {exc}", stacklevel=2)


def ranked_trials(study: Any) -> list[Any]:
    """Complete trials, best first: by accuracy, then lower validation loss, then earlier.

    One ordering for everything that says "best" (the best model, the kept
    models, reports, export), whatever order the storage returns ties in.
    """
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None]
    return sorted(done, key=lambda t: rank_key(t.value, t.user_attrs.get("val_loss"), t.number))


def rank_key(val_accuracy: float, val_loss: Optional[float], number: int) -> tuple[float, float, int]:
    """The sort key of "best first": higher accuracy, then lower validation loss, then the earlier trial."""
    return (-val_accuracy, math.inf if val_loss is None else val_loss, number)


def best_trial(study: Any) -> Any:
    """The best complete trial by :func:`ranked_trials`, or ``None``."""
    ranked = ranked_trials(study)
    return ranked[0] if ranked else None


def _after_trial(cfg: SearchConfig) -> Callable[[Any, Any], None]:
    """Record the finished trial's lineage; drop the stored layers of trials out of the ``keep_models`` best."""
    import optuna

    def callback(study: Any, trial: Any) -> None:
        stored = cfg.out / str(trial.user_attrs.get("weights_path", "-"))
        if trial.state == optuna.trial.TrialState.COMPLETE and stored.is_file():
            _record(cfg.storage_url, cfg.study_name, trial, stored, "trial_weights", cfg.data_summary)
        for t in ranked_trials(study)[cfg.keep_models:]:
            shutil.rmtree(cfg.out / "trials" / f"{t.number:04d}", ignore_errors=True)

    return callback


def trial_model(out: Path, study: Any, number: int, registry: Registry, weights: WeightsSource,
                make_base: Optional[Callable[[Any, Any, int], Any]] = None) -> Path:
    """The ``.keras`` file of trial ``number``, assembled from its stored layers if not yet there."""
    from autotl.model import restore_model

    trial = study.trials[number]
    folder = out / "trials" / f"{number:04d}"
    path = folder / MODEL_FILE
    if path.is_file():
        return path
    stored = out / str(trial.user_attrs.get("weights_path", f"trials/{number:04d}/{WEIGHTS_FILE}"))
    if not stored.is_file():
        raise UsageError(f"trial {number} has no stored model (only the --keep-models best trials keep theirs); pick another trial")
    spec = registry.backbone(trial.params["backbone"])
    resolved, seed = resolve_weights(spec, weights), study.user_attrs.get("space", {}).get("seed", 0)
    model = restore_model(spec, resolved, len(study.user_attrs["class_names"]), trial.params["head_width"], trial.params["dropout"],
                          stored, seed=seed, base=make_base(spec, resolved, seed) if make_base else None)
    tmp = folder / f".{MODEL_FILE}.tmp{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)
    return path


def update_best_model(out: Path, study: Any, registry: Registry, weights: WeightsSource, storage_url: Optional[str] = None,
                      make_base: Optional[Callable[[Any, Any, int], Any]] = None) -> Optional[Path]:
    """Make ``best_model.keras`` the study's best trial's model (a no-op when it already is)."""
    best = best_trial(study)
    if best is None:
        return None
    marker = out / BEST_MARKER
    if (out / BEST_MODEL).is_file() and marker.is_file() and json.loads(marker.read_text()).get("trial") == best.number:
        return out / BEST_MODEL
    _atomic_copy(trial_model(out, study, best.number, registry, weights, make_base), out / BEST_MODEL)
    marker.write_text(json.dumps({"trial": best.number, "value": best.value, "params": best.params}))
    _record(storage_url or default_storage_url(out), study.study_name, best, out / BEST_MODEL, "best_model", study.user_attrs.get("data"))
    return out / BEST_MODEL


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
    study.enqueue_trial(fixed, user_attrs={"stage": FINALIST, "finalist_of": pick.number}, skip_if_exists=False)
    return True


def run_search(cfg: SearchConfig, registry: Registry, dataset: Any, on_event: Optional[Event] = None,
               should_stop: Callable[[], bool] = lambda: False) -> Any:
    """Run (or resume, or join) the study until it holds ``cfg.trials`` complete or pruned trials.

    Every worker runs this same loop against the shared storage: it takes a
    trial while the budget has room, waits while other workers' running trials
    could still fill it, and picks up a trial that a dead worker left behind
    (its heartbeat stopped, so Optuna failed it and queued a retry).  The budget
    counts trials of the whole study, so N workers make ``cfg.trials`` trials
    in total, not N times that.
    """
    import optuna
    from optuna.trial import TrialState

    for name in cfg.space.backbones:  # fail at start-up, not in trial 17
        resolve_weights(registry.backbone(name), cfg.weights)
    cfg.data_summary = cfg.data_summary or dataset.summary()
    _prepare_run_folder(cfg, dataset)
    study = open_study(cfg.storage_url, cfg.study_name, cfg.space.seed, warmup_steps=cfg.space.phase1.epochs,
                       heartbeat=cfg.heartbeat)
    study.set_user_attr("data", cfg.data_summary)
    study.set_user_attr("class_names", list(dataset.class_names))
    study.set_user_attr("space", cfg.space.model_dump())
    from autotl.lineage import library_versions

    study.set_user_attr("versions", library_versions())
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    emit = on_event or (lambda _e: None)
    emit({"start": True, "done": len(study.get_trials(deepcopy=False, states=counted)), "total": cfg.trials})
    objective = _Objective(cfg, registry, dataset, emit)
    callbacks = [_after_trial(cfg), lambda s, t: emit({"finished": t.number, "state": t.state.name, "value": t.value})]
    started = time.monotonic()
    try:
        while not should_stop():
            if cfg.timeout is not None and time.monotonic() - started > cfg.timeout:
                break
            trials = study.get_trials(deepcopy=False, states=(*counted, TrialState.RUNNING, TrialState.WAITING))
            done = sum(t.state in counted for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if done >= cfg.trials:
                break
            if waiting or done + running < cfg.trials:
                if not waiting:
                    _enqueue_finalist(study, cfg.space, trials)  # a two-stage search past its screening
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=callbacks)
            else:  # the others' running trials may fill the budget; wait in case one of them dies
                time.sleep(min(5.0, cfg.heartbeat))
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again
                # (optimize() does this itself before each trial it runs)
    finally:
        update_best_model(cfg.out, study, registry, cfg.weights, cfg.storage_url, objective.base)
    return study


def _prepare_run_folder(cfg: SearchConfig, dataset: Any) -> None:
    """Create the run folder, or say in one line why it cannot be written."""
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        probe = cfg.out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to run folder {cfg.out} ({exc.strerror}); pass a writable --out") from None
    _check_run_folder(cfg, dataset)
    (cfg.out / CLASSES_FILE).write_text(json.dumps(list(dataset.class_names)))


def _check_run_folder(cfg: SearchConfig, dataset: Any) -> None:
    """A run folder belongs to one data set: refuse to mix two in one study."""
    marker = cfg.out / "run.json"
    record = {"data_fingerprint": dataset.fingerprint, "class_names": list(dataset.class_names), "source": dataset.source, "split": dataset.split}
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("data_fingerprint") != dataset.fingerprint:
            raise UsageError(f"run folder {cfg.out} holds a search on other data ({old.get('source')}); pass another --out for {dataset.source}")
        return
    marker.write_text(json.dumps({**record, "command": cfg.command, "space": cfg.space.model_dump(), "weights": cfg.weights.describe(), "created": time.time()}, indent=2))
