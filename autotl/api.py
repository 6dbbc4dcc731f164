"""The Python API: run a search, open a run folder.  The command line is a thin layer over these.

::

    import autotl

    run = autotl.search("images/", out="runs/flowers", space="fast", trials=8)
    print(run.best_trial.params, run.best_value)
    run.trials_dataframe()                       # Optuna's DataFrame of every trial
    run.predict(["a.jpg", "b.png"])              # [("a.jpg", "daisy", 0.97), ...]
    run.export(["keras", "savedmodel"], "deploy/")
    run.ensemble(k=8)                            # the top 8 trials combined, compared with the best
    autotl.Run("runs/flowers").report()          # any run folder, from any process

Errors a user can fix raise :class:`autotl.UsageError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.checkup import doctor
from autotl.engine.options import SearchOptions, accepted, choices
from autotl.errors import SearchStopped, UsageError, first_line
from autotl.run.folder import KERAS_TUNER, OPTUNA, RunFolder

if TYPE_CHECKING:
    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import Dataset
    from autotl.engine.optuna_engine import SearchConfig
    from autotl.engine.space import SearchSpace

__all__ = ["search", "doctor", "Run", "SearchOptions", "ENGINES", "TUNERS"]

Event = Callable[[dict[str, Any]], None]
ENGINES = choices("engine")
TUNERS = choices("tuner")
WORKER_CONFIG = "worker-config.json"


@dataclass
class _Plan:
    """A search's inputs, resolved and checked (what every worker of the search runs)."""

    options: SearchOptions
    out: Path
    space: SearchSpace
    space_file: Optional[str]  # the space's YAML file, when it came from one
    trials: int  # the options', else the space's
    weights: WeightsSource
    registry: Registry
    dataset: Dataset
    command: str
    unavailable: dict[str, str] = field(default_factory=dict)  # backbone -> why it is left out
    session: str = field(
        default_factory=lambda: uuid.uuid4().hex[:12]
    )  # see autotl.engine.failures

    @property
    def explicit(self) -> bool:
        """Backbones named with --backbone: each must be usable."""
        return bool(self.options.backbones)


def search(
    data: str | os.PathLike[str] | None = None,
    *,
    on_event: Optional[Event] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    command: Optional[str] = None,
    **options: Any,
) -> Run:
    """Run, or resume, a search of ``space`` on ``data`` (a folder of class subfolders) or ``sample`` (e.g. ``"digits"``).

    Every keyword but the three callers' ones is a field of :class:`SearchOptions`, with the
    same name, default and checks as the ``autotl search`` flag (``autotl search --help``
    lists them; ``inspect.signature(autotl.search)`` shows them all).

    The study lives in ``out`` (default ``runs/<data name>``); rerunning the same
    call resumes it, and ``trials`` counts the finished trials the study should
    hold in total.  ``space`` is ``"default"``, ``"fast"``, a YAML file or a
    ``SearchSpace``; ``objectives`` (``["accuracy", "latency_ms"]`` or
    ``"accuracy,latency_ms"``) replaces the space's.  ``workers`` processes on this machine share the study
    (``gpus`` are given out in turn); ``storage`` (an Optuna URL) lets workers on
    other machines join.  ``screen``/``finalists`` turn on the two-stage search;
    ``backbone_screening`` (``"on"``, ``"off"``, ``"auto"``) and ``screening_sample``
    override the space's backbone screening (a sample stage before full caches);
    ``engine="keras-tuner"`` runs the space through keras-tuner's ``tuner``.
    ``on_event(dict)`` sees progress (the CLI draws it); ``should_stop()`` is
    asked between trials (Ctrl-C once); ``command`` is what the run records as
    the command that started it.  When the search ends the best model is
    ``best_model.keras`` in ``out`` and, with ``report``, the report is written
    (unless it already shows the study as it is).

    A trial that fails is recorded with its reason and the search goes on; a
    backbone that fails 3 times in a row is dropped, and when no backbone is
    left or ``max_failures`` trials in a row failed, :class:`autotl.errors.SearchStopped`
    is raised (after the report is written), saying why.  What each other option does
    (scale, artifacts, ``exclude``, ``mlflow``, ...) is its field's description in
    :class:`SearchOptions`.
    """
    opts = SearchOptions.parse(data=data, **options)
    from autotl.training.allocator import return_large_buffers

    return_large_buffers()  # memory flat in the data's size (see autotl/training/allocator.py)
    emit = on_event or (lambda _e: None)
    stop = should_stop or (lambda: False)
    plan = _plan(opts, command, emit)
    if opts.mlflow is not None:
        emit = _mlflow_events(plan, opts.mlflow, emit)
    try:
        _run_engine(plan, emit, stop)
    except SearchStopped:  # what did finish is reported, then the reason is said
        if opts.report:
            with contextlib.suppress(Exception):
                _finish(plan, emit, lambda: False)
        raise
    run = _finish(plan, emit, stop)
    if opts.mlflow is not None:
        _log_mlflow(run, opts.mlflow, emit)
    return run


def _log_mlflow(run: Run, uri: str, emit: Event) -> None:
    """The search's end: what MLflow lacks (other workers' trials, the best model); a failure is a warning,
    since the search itself is done and saved."""
    try:
        logged = run.log_mlflow(uri)
    except Exception as exc:
        emit(
            {
                "warning": f"MLflow: not logged ({first_line(exc)[:200]}); `autotl mlflow {run.path} {uri}` "
                "logs it when the server is back"
            }
        )
        return
    emit(
        {"info": f"MLflow: {len(logged.trial_runs)} trials in run {logged.parent_run_id} at {uri}"}
    )


def _mlflow_events(plan: _Plan, uri: str, emit: Event) -> Event:
    """``emit``, also logging each finished trial to MLflow at ``uri`` (checked reachable now)."""
    from autotl.integrations.mlflow import check_server, search_hook

    if plan.options.engine != OPTUNA:
        raise UsageError(
            "mlflow logging follows the Optuna engine's study; drop --engine keras-tuner"
        )
    check_server(uri)
    folder = RunFolder(plan.out)
    return search_hook(
        uri, folder, folder.storage_url(plan.options.storage), plan.options.study_name, emit
    )


def _signature() -> inspect.Signature:
    """``search``'s signature with every option as a keyword, its type and default (what ``help()`` shows)."""
    own = inspect.signature(search).parameters
    options = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=info.default, annotation=accepted(name)
        )
        for name, info in SearchOptions.model_fields.items()
        if name != "data"
    ]
    return inspect.Signature(
        [own["data"], *options, own["on_event"], own["should_stop"], own["command"]],
        return_annotation=inspect.signature(search).return_annotation,
    )


search.__signature__ = _signature()  # type: ignore[attr-defined]


def _run_engine(plan: _Plan, emit: Event, should_stop: Callable[[], bool]) -> None:
    options = plan.options
    if options.engine == KERAS_TUNER:
        _keras_tuner_objectives(plan.space)
        _run_keras_tuner(plan, emit)
    else:
        _run_optuna(plan, emit, should_stop)


def _finish(plan: _Plan, emit: Event, should_stop: Callable[[], bool]) -> Run:
    """The run, opened; unless ``should_stop()`` says the search was stopped, its ensemble chosen (when
    the space asks) and, with the ``report`` option, its report written."""
    options = plan.options
    run = Run(
        plan.out,
        storage=options.storage,
        study_name=options.study_name,
        plugins=options.plugins,
        registry=plan.registry,
        weights=plan.weights,
        engine=options.engine,
    )
    stopped = should_stop()
    if options.engine == OPTUNA and plan.space.ensemble.enabled and not stopped:
        run.ensemble_selection = run._try_ensemble(plan.space.ensemble, emit)
    if options.report and not stopped:
        if run._report_stale() or run.ensemble_selection is not None:
            run.report_paths = run._try_report(emit)
        else:
            run.report_paths = run._report_files()
    return run


def _plan(options: SearchOptions, command: Optional[str], emit: Event) -> _Plan:
    """Load and check everything a search needs before its first trial (fail at start-up, not in trial 17)."""
    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import WeightsSource

    space, space_file = _space(options)
    _check_deploy(space)
    weights = WeightsSource.parse(options.weights_dir, options.weights)
    registry = get_registry(list(options.plugins))
    space, unavailable = _available(space, registry, weights, options.backbones, emit)
    for message in registry.warnings:  # after: asking for a broken plugin's backbone is one line
        emit({"warning": message})
    options = options.but(exclude=_exclude(options, space, space_file))
    name = options.sample or Path(options.data or ".").resolve().name
    out = Path(options.out or Path("runs") / name)
    dataset = _load_data(options, space, registry, out, emit)
    _say_skipped(dataset, out, emit)
    for message in dataset.warnings:
        emit({"warning": message})
    _data_advice(dataset, space, emit)
    return _Plan(
        options=options,
        out=out,
        space=space,
        space_file=space_file,
        trials=options.trials or space.trials,
        weights=weights,
        registry=registry,
        dataset=dataset,
        command=command or _default_command(),
        unavailable=unavailable,
    )


#: The options that override fields of the space (applied by :func:`_space`; an extra worker gets the space as applied).
SPACE_OPTIONS = (
    "screen",
    "finalists",
    "backbone_screening",
    "screening_sample",
    "test_fraction",
    "objectives",
)


def _space(options: SearchOptions) -> tuple[SearchSpace, Optional[str]]:
    """The options' space, loaded, with the options that override its fields applied (two-stage search,
    backbone screening, objectives, test split); and its file."""
    from autotl.engine.space import (
        SearchSpace,
        apply_backbone_screening,
        apply_objectives,
        apply_screening,
        apply_test_fraction,
        load_space,
    )

    if isinstance(options.space, SearchSpace):
        space, space_file = options.space, None
    else:
        space, path = load_space(options.space)
        space_file = str(path)
    space = apply_screening(space, options.screen, options.finalists)
    space = apply_backbone_screening(space, options.backbone_screening, options.screening_sample)
    space = apply_test_fraction(space, options.test_fraction)
    return apply_objectives(space, options.objectives), space_file


def _check_deploy(space: SearchSpace) -> None:
    """Deploy costs in a format whose optional extra is missing (``deploy: {format: onnx}``): one line now."""
    from autotl.export._deploy_costs import check_deploy_format
    from autotl.scoring.objective import Objectives

    if Objectives.of(space.objectives, space.constraints).needs_deploy_costs:
        check_deploy_format(space.deploy.model_dump())


def _exclude(
    options: SearchOptions, space: SearchSpace, space_file: Optional[str]
) -> Optional[str]:
    """The exclusion list's absolute path (the ``exclude`` option, else the space's), which only a data
    folder takes."""
    from autotl.checkup import exclude_of

    found = exclude_of(options.exclude, space, space_file)
    if found and options.sample:
        raise UsageError(
            "--exclude names files of a data folder; a built-in sample (--sample) has none"
        )
    return os.path.abspath(found) if found else None


def _default_command() -> str:
    import shlex

    return shlex.join([Path(sys.argv[0]).name or "python", *sys.argv[1:]])


def _load_data(
    options: SearchOptions, space: SearchSpace, registry: Registry, out: Path, emit: Event
) -> Dataset:
    """The data set with its test split (``test/`` or the space's ``test_fraction``); a folder is
    scanned with the run folder's manifest, so only new or changed files are read."""
    from autotl.data import dataset as data_mod
    from autotl.data.holdout import add_test_split

    data, sample = options.data, options.sample
    if (data is None) == (sample is None):
        raise UsageError(
            "give either DATA_DIR or --sample NAME (e.g. `autotl search --sample digits`)"
        )
    if data is None:  # a sample: exactly one of the two is given
        assert sample is not None
        images, labels, names = registry.sample(sample).load()
        dataset = data_mod.from_arrays(
            images, labels, names, f"sample:{sample}", space.val_fraction, space.seed
        )
        return add_test_split(dataset, None, space.test_fraction, space.seed)
    from autotl.checkup import load_data

    return load_data(data, space, out, options.exclude, options.decode_workers, emit)


def _say_skipped(dataset: Dataset, out: Path, emit: Event, shown: int = 10) -> None:
    """A warning per skipped file, up to ``shown`` of them; the rest counted (the manifest lists them all)."""
    for path, reason in dataset.skipped[:shown]:
        emit({"warning": f"skipped {path}: {reason}"})
    more = len(dataset.skipped) - shown
    if more > 0:
        emit(
            {
                "warning": f"skipped {more:,} more unusable file(s) ({len(dataset.skipped):,} in all); "
                f"{RunFolder(out).manifest} lists each with its reason"
            }
        )


def _data_advice(dataset: Dataset, space: Any, emit: Event) -> None:
    """One line each: class imbalance (recommending balanced accuracy), and no test split where one could be spared."""
    from autotl.data.holdout import recommendation
    from autotl.data.imbalance import imbalance_warning

    warning = imbalance_warning(dataset, space.objectives, space.class_weight)
    if warning:
        emit({"warning": warning})
    advice = recommendation(dataset)
    if advice:
        emit({"warning": advice})


def _test_count(dataset: Dataset) -> str:
    """`` / 60 test`` when the data has a test split (``test_split`` says where from), else nothing."""
    test = getattr(dataset, "test", None)
    return "" if test is None else f" / {len(test)} test ({dataset.test_split})"


def _keras_tuner_objectives(space: Any) -> None:
    """keras-tuner optimises one objective the trainer measures, without constraints."""
    from autotl.scoring.objective import Objectives

    objectives = Objectives.of(space.objectives, space.constraints)
    if len(objectives) > 1 or objectives.constraints or objectives.needs_deploy_costs:
        raise UsageError(
            "several objectives, constraints and deploy costs are the Optuna engine's; with "
            f"engine keras-tuner search one validation objective (got objectives {objectives.names}"
            + (f", constraints {objectives.constraint_bounds()}" if objectives.constraints else "")
            + ")"
        )


def _available(
    space: Any, registry: Registry, weights: Any, explicit: Sequence[str], emit: Event
) -> tuple[Any, dict[str, str]]:
    """The space with the asked-for backbones, and which of them have no weights (warned, skipped).

    A backbone named in ``explicit`` (``--backbone``) must have its weights; a
    weight file whose hash is wrong is never skipped over.  The skipped ones
    stay in the space: a resumed study keeps the backbones it was created with.
    """
    from autotl.backbones.weights import WeightsMissing, resolve_weights

    names = list(explicit) or list(space.backbones)
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            resolve_weights(registry.backbone(name), weights)
        except WeightsMissing as exc:
            if explicit:
                raise
            unavailable[name] = first_line(exc)
            emit({"warning": f"skipping {exc}"})
    if len(unavailable) == len(names):
        raise UsageError(
            f"none of the space's backbones has its weights in {weights.describe()}; "
            "add weight files there or pass --weights none"
        )
    return space.model_copy(update={"backbones": names}), unavailable


def _config(plan: _Plan, worker_index: int = 0, emit: Optional[Event] = None) -> SearchConfig:
    """The Optuna engine's settings: each option :class:`SearchConfig` has by name, as the plan resolved it."""
    from dataclasses import fields

    from autotl.engine.optuna_engine import SearchConfig
    from autotl.export import measure_deploy_costs

    options = plan.options
    shared = {
        f.name: getattr(options, f.name)
        for f in fields(SearchConfig)
        if f.name in SearchOptions.model_fields
    }
    resolved = {
        "out": plan.out,
        "space": plan.space,
        "trials": plan.trials,
        "weights": plan.weights,
        "keep_models": _keep_models(plan),
        "cache_dir": Path(options.cache_dir) if options.cache_dir else None,
    }
    return SearchConfig(
        **{**shared, **resolved},
        record={"command": plan.command, "options": options.record()},
        worker_index=worker_index,
        session=plan.session,
        unavailable=dict(plan.unavailable),
        explicit=plan.explicit,
        deploy_costs=measure_deploy_costs,
        before_trials=_before_trials(plan, emit) if worker_index == 0 and emit else None,
    )


def _before_trials(plan: _Plan, emit: Event) -> Callable[..., None]:
    """Before the first trial: the exclusion list into the lineage tables, and a warning on leakage
    (copies of an image in two splits), from the features the search has just cached: those of
    ``backbone`` (the first one whose full cache is ready; default: the first usable)."""
    from autotl.checkup import leakage_check, safely
    from autotl.run.lineage import record_exclusions

    def before(cache: Any, backbone: Optional[str] = None) -> None:
        record_exclusions(
            RunFolder(plan.out).storage_url(plan.options.storage), plan.dataset.summary()
        )
        check = leakage_check(
            dataset=plan.dataset,
            registry=plan.registry,
            weights=plan.weights,
            backbone=backbone or _usable(plan)[0],
            manifest=None if plan.options.sample else RunFolder(plan.out).manifest,
            augmentation=plan.space.augmentation,
            seed=plan.space.seed,
        )
        safely(check, emit)(cache)

    return before


def _keep_models(plan: _Plan) -> int:
    """``--keep-models``, raised to the space's ``ensemble.top_k`` when ensembles are on (an ensemble of the
    top K trials needs their layers)."""
    ensemble = plan.space.ensemble
    keep = plan.options.keep_models
    return max(keep, ensemble.top_k) if ensemble.enabled else keep


def _run_optuna(
    plan: _Plan, emit: Event, should_stop: Callable[[], bool], worker_index: int = 0
) -> Any:
    """This process is worker ``worker_index``; with the ``workers`` option > 1 it starts the others and
    waits for them (an extra worker's options say 1)."""
    from autotl.engine.optuna_engine import run_search

    workers, gpus = plan.options.workers, list(plan.options.gpus)
    cfg = _config(plan, worker_index, emit)
    emit(
        {
            "info": f"autotl: {plan.dataset.source}: {len(plan.dataset.class_names)} classes, {len(plan.dataset.train)} train / "
            f"{len(plan.dataset.val)} val{_test_count(plan.dataset)} images ({plan.dataset.split}){_scanned(plan.dataset)}; "
            f"backbones {', '.join(_usable(plan))}; study in {cfg.storage_url}"
        }
    )
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[worker_index % len(gpus)]
    procs = _spawn_workers(plan, workers, gpus) if workers > 1 else []
    if procs:
        emit({"info": f"started {len(procs)} more worker(s); their logs are in {cfg.run.logs_dir}"})
    try:
        return run_search(cfg, plan.registry, plan.dataset, emit, should_stop)
    finally:
        for proc, log in procs:
            proc.wait()
            log.close()
            if proc.returncode not in (0, 130):
                emit({"warning": f"a worker exited with code {proc.returncode}; see {log.name}"})


def _scanned(dataset: Dataset) -> str:
    """How much of the data the scan read (the manifest knew the rest)."""
    scan = getattr(dataset, "scan", None) or {}
    if not scan.get("files"):
        return ""
    return f", {scan['read']:,} of {scan['files']:,} files read ({scan['seconds']:.1f} s)"


def _spawn_workers(plan: _Plan, workers: int, gpus: list[str]) -> list[Any]:
    """Start workers 1..N-1 (``python -m autotl.worker``) with this search's options; this process is worker 0."""
    import subprocess

    run = RunFolder(plan.out)
    run.prepare()
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    path = run.logs_dir / WORKER_CONFIG
    run.write_json(path, worker_config(plan))
    procs = []
    for i in range(1, workers):
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {})}
        log = open(run.logs_dir / f"worker-{i}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "autotl.worker", str(path), str(i)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        procs.append((proc, log))
    return procs


def worker_config(plan: _Plan) -> dict[str, Any]:
    """What an extra worker runs: the options with the space and trial budget as resolved here (the
    space's file, screening, objectives and test split already applied), one worker each, and this search's session."""
    options = plan.options.but(
        out=str(plan.out),
        space=plan.space,
        trials=plan.trials,
        **dict.fromkeys(SPACE_OPTIONS),  # applied to the space already
        workers=1,
        gpus=(),
        report=False,
    )
    return {"options": options.record(), "command": plan.command, "session": plan.session}


def run_worker(
    config_file: str | os.PathLike[str], index: int, should_stop: Callable[[], bool] = lambda: False
) -> Any:
    """Worker ``index`` of a search whose options ``_spawn_workers`` wrote to ``config_file``."""
    from autotl.training.allocator import return_large_buffers

    return_large_buffers()
    config = json.loads(Path(config_file).read_text())
    options = SearchOptions.parse(**config["options"])
    emit = _print_event
    plan = _plan(options, config.get("command"), emit)
    if config.get("session"):  # the same search: "in a row" counts the trials of all its workers
        plan.session = config["session"]
    return _run_optuna(plan, emit, should_stop, worker_index=index)


def _print_event(e: dict[str, Any]) -> None:
    """A worker's log: warnings, notes and finished trials, one line each."""
    if "warning" in e:
        print(f"warning: {e['warning']}", flush=True)
    elif "info" in e:
        print(e["info"], flush=True)
    elif "finished" in e:
        why = f": {e['reason']}" if e.get("reason") else ""
        print(f"trial {e['finished']}: {str(e.get('state', '?')).lower()}{why}", flush=True)


def _usable(plan: _Plan) -> list[str]:
    return [b for b in plan.space.backbones if b not in plan.unavailable]


def _checked_space(plan: _Plan, emit: Event) -> Any:
    """The space with only the backbones that have weights and pass their checks (keras-tuner's choices)."""
    from autotl.engine.prechecks import precheck_backbones

    run = RunFolder(plan.out)
    run.prepare()
    p2 = plan.space.phase2
    checked = precheck_backbones(
        run,
        plan.registry,
        plan.space.backbones,
        plan.weights,
        seed=plan.space.seed,
        blocks=0 if p2.unfreeze_all else p2.unfreeze_blocks.high,
        explicit=plan.explicit,
        emit=emit,
        skipped=plan.unavailable,
    )
    keep = [b for b in plan.space.backbones if b not in checked.skipped]
    return plan.space.model_copy(update={"backbones": keep})


def _run_keras_tuner(plan: _Plan, emit: Event) -> list[dict[str, Any]]:
    run, tuner = RunFolder(plan.out), plan.options.tuner
    if plan.space.two_stage is not None:
        emit(
            {
                "warning": "the space's two-stage search (two_stage, formerly screening) is the Optuna engine's; keras-tuner runs every trial in full"
            }
        )
    if plan.space.phase2.deepen is not None:
        blocks = plan.space.phase2.unfreeze_blocks
        emit(
            {
                "warning": "the fine-tuning depth's widening (phase2.deepen) is the Optuna engine's; "
                f"keras-tuner searches unfreeze_blocks {blocks.low}..{blocks.high}"
            }
        )
    _keras_tuner_screening(plan.space, emit)
    emit(
        {
            "info": f"autotl: {plan.dataset.source}: {len(plan.dataset.class_names)} classes, {len(plan.dataset.train)} train / "
            f"{len(plan.dataset.val)} val{_test_count(plan.dataset)} images ({plan.dataset.split}); backbones {', '.join(_usable(plan))}; "
            f"keras-tuner {tuner} in {run.engine_dir(KERAS_TUNER)}"
        }
    )
    from autotl.engine.keras_tuner import (
        run_keras_tuner_search,  # TensorFlow: after the "info" event
    )
    from autotl.training.cache import FeatureCache

    _before_trials(plan, emit)(FeatureCache(run.cache_dir))
    records = run_keras_tuner_search(
        _checked_space(plan, emit),
        plan.dataset,
        plan.registry,
        plan.weights,
        plan.out,
        plan.trials,
        tuner=tuner,
        verbose=1,
        storage_url=plan.options.storage,
        study_name=plan.options.study_name,
    )
    emit({"records": records, "title": f"leaderboard: keras-tuner {tuner}"})
    return records


def _keras_tuner_screening(space: Any, emit: Event) -> None:
    """keras-tuner does not screen backbones: refused in one line when asked for, said once when ``auto``."""
    screening = space.backbone_screening
    if screening.enabled is True:
        raise UsageError(
            "backbone screening is the Optuna engine's; keras-tuner caches every backbone on all the "
            "data: pass --backbone-screening off, or leave out --engine keras-tuner"
        )
    if screening.active(len(space.backbones)):
        emit(
            {
                "warning": "backbone screening is the Optuna engine's; keras-tuner searches every backbone on all the data"
            }
        )


class Run:
    """A run folder, opened: its study, its trials, its best model, and what can be done with them.

    ``Run(path)`` opens any run folder (``autotl search``'s ``--out``), also while
    a search is still running in it.  ``storage`` names the study's storage when
    the search used ``--storage``; ``plugins`` and ``weights_dir``/``weights`` are
    needed only to assemble a trial's model where the search's are not at hand.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        storage: Optional[str] = None,
        study_name: str = "autotl",
        plugins: Sequence[str] = (),
        weights_dir: str | os.PathLike[str] | None = None,
        weights: Optional[WeightsSource] = None,
        registry: Optional[Registry] = None,
        engine: str = OPTUNA,
    ) -> None:
        from autotl.backbones.weights import WeightsSource

        self.folder = RunFolder(path)
        self.storage_url = self.folder.require(storage)
        self.study_name = RunFolder.study_name(study_name, engine)
        self._base_name = study_name
        self.plugins = list(plugins)
        self.engine = engine
        self._registry = registry
        self._weights: Optional[WeightsSource] = None
        if isinstance(weights, WeightsSource):
            self._weights = weights
        elif weights_dir or weights:
            where = os.fspath(weights_dir) if weights_dir is not None else None
            self._weights = WeightsSource.parse(where, weights)
        self.report_paths: Optional[dict[str, Path]] = None
        self.ensemble_selection: Any = (
            None  # what the search's ensemble chose (``ensemble.enabled``)
        )

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def path(self) -> Path:
        return self.folder.path

    @cached_property
    def study(self) -> Any:
        """The run's Optuna study (loaded; nothing is created or sampled)."""
        study, _ = self.folder.open_study(self.storage_url, self.study_name, any_engine=True)
        return study

    @property
    def objectives(self) -> Any:
        from autotl.scoring.objective import Objectives

        return Objectives.of_study(self.study)

    @property
    def best_trial(self) -> Any:
        """The best complete trial (Optuna's ``FrozenTrial``) by the run's objectives, or None (also when
        no complete trial meets the run's constraints)."""
        from autotl.scoring.objective import best_trial

        return best_trial(self.study)

    @property
    def best_value(self) -> Optional[float]:
        best = self.best_trial
        return None if best is None else self.objectives.value(best)

    @property
    def class_names(self) -> list[str]:
        return self.folder.class_names(self.study)

    def no_best_reason(self) -> str:
        """Why there is no best trial, in one line: no complete trial yet, or none meets the constraints."""
        from autotl.scoring.objective import complete_trials

        complete = complete_trials(self.study)
        if not complete:
            return f"the study in {self.path} has no complete trial yet; finish a search first"
        bounds = ", ".join(c.describe() for c in self.objectives.constraints)
        return (
            f"none of the {len(complete)} complete trials in {self.path} meets the constraints "
            f"({bounds}); relax them, or pass --trial N"
        )

    def pick(self, condition: str) -> Any:
        """The best complete trial that meets ``condition`` (``"latency_ms<=15"``, see :mod:`autotl.engine.pick`)."""
        from autotl.engine.pick import pick_trial

        return pick_trial(self.study, condition)

    def screening(self) -> Any:
        """Backbone screening as a pandas DataFrame, one row per backbone: its sample scores (head accuracy
        and its interval, LogME), measured images/s, the full cache's estimated seconds, whether it went
        on to all the data and why, and its best on all the data (empty when the search did not screen)."""
        import pandas as pd

        from autotl.engine.backbone_screen import COLUMNS, screening_rows

        return pd.DataFrame(
            screening_rows(self.study, self.storage_url, self.study_name), columns=list(COLUMNS)
        )

    def trials_dataframe(self, **kwargs: Any) -> Any:
        """Optuna's ``study.trials_dataframe()`` (needs pandas)."""
        return self.study.trials_dataframe(**kwargs)

    def best_model_file(self) -> Path:
        """The best trial's ``.keras`` file, assembled from its stored layers if needed."""
        engine = str(self.study.user_attrs.get("engine") or OPTUNA)
        if engine == KERAS_TUNER:
            path = self.folder.best_model(KERAS_TUNER)
            if not path.is_file():
                raise UsageError(
                    f"no {self.folder.relative(path)} in {self.path}: no keras-tuner trial has finished"
                )
            return path
        best = self.best_trial
        if best is None:
            raise UsageError(self.no_best_reason())
        if self.folder.best_trial_number() == best.number:
            return self.folder.best_model()
        from autotl.run.trial_models import trial_model

        return trial_model(
            self.folder,
            self.study,
            best,
            self._registry,
            self._weights,
            plugins=tuple(self.plugins),
        )

    def best_model(self) -> Any:
        """The best trial's Keras model: raw pixels of any size in, class probabilities out."""
        import keras

        return keras.saving.load_model(self.best_model_file(), safe_mode=True)

    def predict(
        self, images: Iterable[str | os.PathLike[str]]
    ) -> list[tuple[str, str, Optional[float]]]:
        """``(file, class, probability)`` per image file with the best model; ``(file, reason, None)`` if unreadable."""
        from autotl.export import load_predictor
        from autotl.predict import predict_files

        predict, names = load_predictor(self.best_model_file(), self.class_names)
        return predict_files(predict, names, [os.fspath(p) for p in images])

    def data_issues(self, backbone: Optional[str] = None, refresh: bool = False) -> Any:
        """The health of the run's data (``autotl.health.DataHealth``: duplicates, leakage, label issues,
        outliers), as the search saw it: ``RUN_DIR/health/health.json`` when it describes this data, else
        checked now with ``backbone``'s (default: the best trial's) cached features, and saved there with
        ``issues.csv``.  ``refresh`` checks again."""
        from autotl.backbones.registry import get_registry
        from autotl.checkup import data_issues
        from autotl.run.trial_models import weights_of_run

        return data_issues(
            self.folder,
            self.study,
            self._registry or get_registry(self.plugins),
            weights_of_run(self.folder, self._weights),
            backbone,
            refresh,
        )

    def _try_data_issues(self) -> None:
        """The data's health for the report; when it cannot be checked here, the report says why."""
        try:
            self.data_issues()
        except Exception as exc:
            self.folder.health_dir.mkdir(parents=True, exist_ok=True)
            self.folder.write_json(
                self.folder.health_file("skipped.json"),
                {
                    "fingerprint": (self.study.user_attrs.get("data") or {}).get("fingerprint"),
                    "reason": first_line(exc),
                },
            )

    def report(self, evaluate: bool = True) -> dict[str, Path]:
        """Write report.html, report.md and report.json into the run folder; return their paths.

        The best model is made available here first (fetched from the study's
        artifact store, or assembled from the best trial's layers), so the
        report evaluates it on any machine that reaches the study; the data's
        health (:meth:`data_issues`) is checked first too, for its section.
        """
        from autotl.report import write_report

        state = self._study_state()
        if evaluate:
            self._fetch_best_model()
            self._try_data_issues()
        self.report_paths = write_report(
            self.path, self.storage_url, self._base_name, evaluate=evaluate
        )
        self.folder.write_json(self.folder.report_stamp, state)
        return self.report_paths

    def _fetch_best_model(self) -> None:
        """``best_model.keras`` as the study's best trial's, when this machine can make it (else the report says so)."""
        if str(self.study.user_attrs.get("engine") or OPTUNA) != OPTUNA:
            return
        from autotl.backbones.registry import get_registry
        from autotl.run.trial_models import update_best_model, weights_of_run

        try:
            registry = self._registry or get_registry(self.plugins)
            update_best_model(
                self.folder,
                self.study,
                registry,
                weights_of_run(self.folder, self._weights),
                self.storage_url,
            )
        except UsageError:
            pass

    def _study_state(self) -> dict[str, Any]:
        """What the report shows of the study, in brief: every trial's number, state and values."""
        import hashlib

        trials = self.study.get_trials(deepcopy=False)
        text = json.dumps(
            [[t.number, t.state.name, t.values, str(t.datetime_complete)] for t in trials]
        )
        return {"study": self.study_name, "trials": hashlib.sha256(text.encode()).hexdigest()}

    def _report_files(self) -> dict[str, Path]:
        return {kind: self.folder.report(kind) for kind in ("html", "md", "json")}

    def _report_stale(self) -> bool:
        """Whether the report must be written again: it is missing, or the study changed since it was."""
        if not all(p.is_file() for p in self._report_files().values()):
            return True
        stamp = self.folder._read_json(self.folder.report_stamp)
        return stamp != self._study_state()

    def _try_report(self, emit: Event) -> Optional[dict[str, Path]]:
        """The report at the end of a search: the results are safe whatever happens to it."""
        try:
            return self.report()
        except Exception as exc:
            emit(
                {
                    "warning": f"report not written ({first_line(exc)}); run `autotl report {self.path}` to retry"
                }
            )
            return None

    def ensemble(
        self,
        k: Optional[int] = None,
        *,
        tta: Optional[str] = "flip",
        test: Any = None,
        test_source: Optional[str] = None,
        latency: bool = True,
        init: int = 1,
        bags: int = 0,
        data: Optional[str] = None,
        on_event: Optional[Callable[[str], None]] = None,
    ) -> Any:
        """Choose an ensemble of the top ``k`` trials (default: the space's ``ensemble.top_k``, else 8) by
        ensemble selection on the validation images (a trial whose layers were not kept is refitted from
        the feature cache, and left out if its refit does not reproduce its recorded score), and score it
        beside the best single model, each with and without ``tta`` ("flip" or None), on validation and on ``test`` (an ``autotl.data.dataset.ImageSet`` in
        the run's class order, described by ``test_source``; default: the data set's test split, if it has
        one).  With ``latency``, each
        is timed through TFLite.  ``init`` best models start the selection; ``bags`` > 0 bags it.

        Returns ``autotl.ensemble.EnsembleSelection`` (members, weights, scores), also saved in the run
        folder, where ``export(ensemble=True)`` and the report find it.
        """
        from autotl.ensemble import select_ensemble, space_top_k
        from autotl.export import tflite_latency

        if str(self.study.user_attrs.get("engine") or OPTUNA) != OPTUNA:
            raise UsageError(
                "an ensemble is built from the Optuna engine's kept trials; this run has only keras-tuner's"
            )
        return select_ensemble(
            self.folder,
            self.study,
            k=space_top_k(self.study) if k is None else k,
            tta=tta,
            test=test,
            test_source=test_source,
            init=init,
            bags=bags,
            data=data,
            registry=self._registry,
            weights=self._weights,
            plugins=self.plugins,
            measure=tflite_latency if latency else None,
            say=on_event or (lambda _m: None),
        )

    def _try_ensemble(self, settings: Any, emit: Event) -> Any:
        """The ensemble at the end of a search (``ensemble.enabled``): the results are safe whatever happens to it."""
        try:
            return self.ensemble(
                settings.top_k, tta=settings.tta, on_event=lambda m: emit({"info": m})
            )
        except Exception as exc:
            emit(
                {
                    "warning": f"ensemble not built ({first_line(exc)}); run `autotl ensemble {self.path}` to retry"
                }
            )
            return None

    def log_mlflow(
        self, uri: str, *, experiment: Optional[str] = None, model_name: Optional[str] = None
    ) -> Any:
        """Log the study to MLflow at ``uri`` (``autotl mlflow RUN_DIR URI``): a parent run, a nested run per
        finished trial not logged yet, the best model registered as ``model_name`` (default: the run
        folder's name); returns ``autotl.integrations.mlflow.MlflowLog``."""
        from autotl.integrations.mlflow import log_study

        return log_study(uri, self.folder, self.study, self.storage_url, experiment, model_name)

    def _export_trial(self, trial: Optional[int], pick: Optional[str]) -> Optional[int]:
        """The trial an export takes: ``trial``, the best that meets ``pick``, or the best (None)."""
        if pick is not None:
            if trial is not None:
                raise UsageError("pass --trial N or --pick CONDITION, not both")
            return self.pick(pick).number
        if trial is None and self.best_trial is None:
            raise UsageError(self.no_best_reason())
        return trial

    def export(
        self,
        formats: str | Sequence[str] | None = None,
        out: str | os.PathLike[str] | None = None,
        *,
        trial: Optional[int] = None,
        quantize: Optional[str] = None,
        data: Optional[str] = None,
        on_event: Optional[Callable[[str], None]] = None,
        pick: Optional[str] = None,
        ensemble: bool = False,
        tta: Optional[str] = None,
        mlflow: Optional[str] = None,
        version: int | str | None = None,
        refit: bool = True,
    ) -> Any:
        """Export the best trial's model (or ``trial``'s, or the best that meets ``pick``, e.g.
        ``"latency_ms<=15"``, or with ``ensemble`` the run's ensemble, see :meth:`ensemble`;
        ``tta="flip"`` builds flip test-time augmentation in) in ``formats`` into ``out`` (default
        RUN_DIR/export), each format checked against the Keras model; returns
        ``autotl.export.ExportResult``. ``version`` (a number, or ``"next"``) writes the new version
        folder ``out/<version>/`` that a model server watching ``out`` loads.  With ``mlflow`` (a
        tracking URI) each exported format is registered in MLflow's model registry
        (``result.registered``).  A trial whose layers the search did not keep is refitted from the
        feature cache (and refused if it does not reproduce its record); ``refit=False`` refuses it."""
        from autotl.export import export

        if mlflow is not None:
            from autotl.integrations.mlflow import check_server

            check_server(mlflow)
        target = Path(out) if out is not None else self.path / "export"
        result = export(
            self.path,
            target,
            formats,
            trial=self._export_trial(trial, pick),
            quantize=quantize,
            storage_url=self.storage_url,
            study_name=self._base_name,
            data=data,
            plugins=self.plugins,
            weights=self._weights,
            registry=self._registry,
            on_event=on_event,
            ensemble=ensemble,
            tta=tta,
            version=version,
            refit=refit,
        )
        self._share_export(result)
        if mlflow is not None:
            from autotl.integrations.mlflow import register_export

            result.registered = register_export(mlflow, result, self.folder, self.study)
        return result

    def _share_export(self, result: Any) -> None:
        """Put the export in the study's artifact store (one ``.tar``), listed in the study's ``exports``."""
        from autotl.run.artifacts import upload_folder
        from autotl.run.trial_models import study_store

        try:
            what = "ensemble" if result.variant else f"trial-{result.trial:04d}"
            name = f"export-{what}-{int(time.time())}"
            store = study_store(self.folder, self.study)
            artifact_id = upload_folder(store, self.study, result.out_dir, name)
            exports = list(self.study.user_attrs.get("exports") or [])
            exports.append({"trial": result.trial, "artifact_id": artifact_id, "name": name})
            self.study.set_user_attr("exports", exports)
        except Exception as exc:  # the export is in place; only its shared copy is missing
            result.warnings.append(f"export not put in the artifact store: {first_line(exc)}")

    def lineage(self, model_file: str | os.PathLike[str] | None = None) -> Any:
        """The lineage record of ``model_file`` (default: the best model), or, with ``model_file=None`` and no best
        model yet, every model the run recorded."""
        from autotl.run.lineage import lineage_of, list_models

        if model_file is None:
            best = self.folder.best_model()
            if not best.is_file():
                return list_models(self.storage_url, self.study_name)
            model_file = best
        return lineage_of(model_file, self.storage_url)
