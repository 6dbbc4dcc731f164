"""The command line.  The only place that turns exceptions into exit codes.

Every ``AutotlError`` becomes one line on stderr and exit code 2; Ctrl-C says
how to resume and exits 130.  Heavy libraries load inside the commands, so
``autotl --help`` and ``autotl plugins`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from autotl.errors import AutotlError, UsageError, first_line
from autotl.export import add_export_parser, cmd_export
from autotl.lineage import add_lineage_parser, cmd_lineage
from autotl.report import add_report_parser, cmd_report

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter (CUDA probes, oneDNN notes) silenced.

    TensorFlow 2.21 logs those before ``TF_CPP_MIN_LOG_LEVEL`` takes effect,
    so stderr is closed at the file-descriptor level for the import only.
    """
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", module="keras")
    if "tensorflow" in sys.modules:
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 160)


def _add_plugin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import MODULE as an autotl plugin (repeatable)")


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-dir", metavar="DIR", help="folder of Keras weight files (default: $AUTOTL_WEIGHTS_DIR, else Keras downloads ImageNet weights)")
    p.add_argument("--weights", choices=["imagenet", "none"], help="'none' starts from random weights (for tests)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autotl", description="Search pretrained image backbones for the best transfer-learned classifier.")
    parser.add_argument("--version", action="version", version=f"autotl {__import__('autotl').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run or resume a search", description="Create the study in --out, or resume it, and run trials until it holds --trials finished ones.")
    s.add_argument("data", nargs="?", metavar="DATA_DIR", help="folder of class subfolders (with train/ and val/ inside, they are used as they are)")
    s.add_argument("--sample", metavar="NAME", help="use a built-in sample data set instead of DATA_DIR (e.g. digits)")
    s.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<data name>)")
    s.add_argument("--trials", type=int, metavar="N", help="finished trials the study should hold in total (default: the space's)")
    s.add_argument("--space", default="default", metavar="NAME_OR_FILE", help="search space: 'default', 'fast' or a YAML file")
    s.add_argument("--screen", type=int, metavar="N", help="two-stage search: the first N trials screen settings with phase 1 only, "
                   "later trials fine-tune the best (overrides the space's screening; 0 turns it off)")
    s.add_argument("--finalists", type=int, metavar="K", help="with --screen: how many screened settings are fine-tuned, in turn (default 3)")
    s.add_argument("--backbone", action="append", default=[], metavar="NAME", help="search only these backbones (repeatable)")
    s.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite in the run folder)")
    s.add_argument("--study-name", default="autotl", help="study name in the storage (default: autotl)")
    s.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting new trials after this long")
    s.add_argument("--keep-models", type=int, default=3, metavar="K", help="keep the saved models of the K best trials (default 3)")
    s.add_argument("--engine", choices=["optuna", "keras-tuner"], default="optuna", help="search engine (default optuna); keras-tuner keeps its project in RUN_DIR/keras_tuner")
    s.add_argument("--tuner", choices=["bayesian", "random", "hyperband"], default="bayesian", help="keras-tuner's tuner, with --engine keras-tuner (default bayesian)")
    s.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes on this machine, sharing the study (default 1)")
    s.add_argument("--gpus", metavar="0,1,...", help="give worker i the GPU gpus[i %% len(gpus)] (CUDA_VISIBLE_DEVICES)")
    s.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS", help="worker heartbeat; a worker silent for 4 is declared dead and its trial retried (default 30)")
    _add_weights_args(s)
    _add_plugin_args(s)

    p = sub.add_parser("predict", help="classify images with a run's best model or any exported model")
    p.add_argument("run", metavar="MODEL", help="run folder, export folder, .keras file, SavedModel folder or .tflite file")
    p.add_argument("images", nargs="+", metavar="IMAGE")

    pl = sub.add_parser("plugins", help="list the backbones and samples that plugins provide, or check one",
                        description="`autotl plugins` lists every backbone; `autotl plugins check NAME_OR_MODULE` runs the plugin contract checks.")
    pl.add_argument("action", nargs="?", choices=["list", "check"], default="list")
    pl.add_argument("target", nargs="?", metavar="NAME_OR_MODULE", help="with check: a backbone name, or a plugin module (all its backbones)")
    _add_plugin_args(pl)
    _add_weights_args(pl)
    add_report_parser(sub)
    add_lineage_parser(sub)
    add_export_parser(sub)
    return parser


def _load_data(args: argparse.Namespace, space: Any, registry: Any) -> Any:
    from autotl import data

    if bool(args.data) == bool(args.sample):
        raise UsageError("give either DATA_DIR or --sample NAME (e.g. `autotl search --sample digits`)")
    if args.sample:
        images, labels, names = registry.sample(args.sample).load()
        return data.from_arrays(images, labels, names, f"sample:{args.sample}", space.val_fraction, space.seed)
    return data.load_folder(args.data, space.val_fraction, space.seed)


def _available(space: Any, registry: Any, weights: Any, explicit: Sequence[str], warn: Any) -> Any:
    """Drop space backbones whose weights are absent (warned); explicit ones must be present."""
    from autotl.weights import resolve_weights

    names = list(explicit) or list(space.backbones)
    keep = []
    for name in names:
        spec = registry.backbone(name)
        try:
            resolve_weights(spec, weights)
            keep.append(name)
        except UsageError as exc:
            if explicit or "SHA-256" in str(exc):
                raise
            warn(f"skipping {exc}")
    if not keep:
        raise UsageError(f"none of the space's backbones has its weights in {weights.describe()}; add weight files there or pass --weights none")
    return space.model_copy(update={"backbones": keep})


def _spawn_workers(args: argparse.Namespace, out: Path) -> list[Any]:
    """Start workers 1..N-1 as copies of this command; this process is worker 0."""
    import subprocess

    gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else []
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
    argv = [a for a in sys.argv[1:]]
    for flag in ("--workers", "--gpus"):
        while flag in argv:
            i = argv.index(flag)
            del argv[i : i + 2]
        argv = [a for a in argv if not a.startswith(flag + "=")]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(1, args.workers):
        env = {**os.environ, "AUTOTL_WORKER_INDEX": str(i), **({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {})}
        log = open(out / "logs" / f"worker-{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "autotl", *argv, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=env), log))
    return procs


def _screening(space: Any, screen: Optional[int], finalists: Optional[int]) -> Any:
    """The space with ``--screen``/``--finalists`` applied."""
    from pydantic import ValidationError

    from autotl.space import Screening, _errors

    if screen is None:
        if finalists is None:
            return space
        if space.screening is None:
            raise UsageError("--finalists needs a two-stage search: add --screen N (or screening in the space file)")
        screen = space.screening.trials
    if screen < 0:
        raise UsageError(f"--screen must be 0 (off) or more, got {screen}")
    if screen == 0:
        return space.model_copy(update={"screening": None})
    current = space.screening.model_dump() if space.screening is not None else {}
    changes = {"trials": screen, **({"finalists": finalists} if finalists is not None else {})}
    try:  # the space's own validation, so limits are stated once
        screening = Screening(**{**current, **changes})
    except ValidationError as exc:
        raise UsageError(f"--screen/--finalists: {_errors(exc)}") from None
    return space.model_copy(update={"screening": screening})


def cmd_search(args: argparse.Namespace) -> int:
    from autotl.registry import get_registry
    from autotl.space import load_space
    from autotl.weights import WeightsSource

    err = _console(stderr=True)
    warn = lambda msg: err.print(f"[yellow]warning:[/] {msg}")  # noqa: E731
    space, _ = load_space(args.space)
    space = _screening(space, args.screen, args.finalists)
    weights = WeightsSource.parse(args.weights_dir, args.weights)
    registry = get_registry(args.plugin)
    space = _available(space, registry, weights, args.backbone, warn)
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1, got {args.trials}")
    if args.workers < 1 or args.heartbeat < 1:
        raise UsageError("--workers and --heartbeat must be at least 1")
    dataset = _load_data(args, space, registry)
    _quiet_tensorflow()
    for path, reason in dataset.skipped:
        warn(f"skipped {path}: {reason}")
    for message in dataset.warnings:
        warn(message)
    name = args.sample or Path(args.data).resolve().name
    out = Path(args.out or Path("runs") / name)
    if args.engine == "keras-tuner":
        return _search_keras_tuner(args, space, registry, weights, dataset, out)
    from autotl.search import BEST_MODEL, SearchConfig, run_search
    from autotl.ui import SearchProgress, leaderboard

    cfg = SearchConfig(
        out=out, space=space, trials=args.trials or space.trials, weights=weights, storage=args.storage,
        study_name=args.study_name, keep_models=args.keep_models, timeout=args.timeout,
        data_summary=dataset.summary(), command=shlex.join(["autotl", *sys.argv[1:]]), heartbeat=args.heartbeat,
    )
    console = _console()
    console.print(f"autotl: {dataset.source}: {len(dataset.class_names)} classes, {len(dataset.train)} train / {len(dataset.val)} val images ({dataset.split}); "
                  f"backbones {', '.join(space.backbones)}; study in {cfg.storage_url}")
    workers = _spawn_workers(args, out) if args.workers > 1 or args.gpus else []
    if workers:
        console.print(f"started {len(workers)} more worker(s); their logs are in {out / 'logs'}")
    resume = f"finished trials are saved in {cfg.storage_url}; rerun the same command to resume"
    presses = _CtrlC(err)
    try:
        with presses, SearchProgress(console, cfg.trials) as progress:
            study = run_search(cfg, registry, dataset, progress.event, should_stop=presses.pressed)
    except KeyboardInterrupt:
        err.print(f"stopped now: the running trial is marked failed; {resume}")
        return EXIT_INTERRUPTED
    finally:
        for proc, log in workers:
            proc.wait()
            log.close()
            if proc.returncode not in (0, EXIT_INTERRUPTED):
                err.print(f"[yellow]warning:[/] a worker exited with code {proc.returncode}; see {log.name}")
    if presses.pressed():
        err.print(f"stopped after the current trial; {resume}")
        return EXIT_INTERRUPTED
    console.print(leaderboard(study))
    return _finish(out, args, console, err, out / BEST_MODEL, "")


def _finish(out: Path, args: argparse.Namespace, console: Any, err: Any, best: Path, how: str) -> int:
    """A finished search's last words: the report (the results are safe whatever happens to it), then where the best model is."""
    try:
        from autotl.report import write_report

        console.print(f"report: {write_report(out, args.storage, args.study_name)['html']}")
    except Exception as exc:  # noqa: BLE001
        err.print(f"[yellow]warning:[/] report not written ({exc}); run `autotl report {out}` to retry")
    if best.is_file():
        console.print(f"best model: {best}  (classes in {best.parent / 'classes.json'}{how})")
    else:
        console.print("no trial finished, so there is no best model yet; rerun the same command to resume")
    return 0


def _search_keras_tuner(args: argparse.Namespace, space: Any, registry: Any, weights: Any, dataset: Any, out: Path) -> int:
    """``autotl search --engine keras-tuner``: the same space and trainer, keras-tuner's tuners; resumable in RUN_DIR/keras_tuner."""
    if args.timeout is not None or args.workers > 1 or args.gpus:
        raise UsageError("--timeout, --workers and --gpus are the Optuna engine's; with --engine keras-tuner the search runs in one process and lives in RUN_DIR/keras_tuner")
    from autotl.keras_tuner import BEST_MODEL, KERAS_TUNER_DIR, leaderboard, run_keras_tuner_search

    folder = out / KERAS_TUNER_DIR
    console, err = _console(), _console(stderr=True)
    if space.screening is not None:
        err.print("[yellow]warning:[/] the space's screening (two-stage search) is the Optuna engine's; keras-tuner runs every trial in full")
    console.print(f"autotl: {dataset.source}: {len(dataset.class_names)} classes, {len(dataset.train)} train / {len(dataset.val)} val images ({dataset.split}); "
                  f"backbones {', '.join(space.backbones)}; keras-tuner {args.tuner} in {folder}")
    try:
        records = run_keras_tuner_search(space, dataset, registry, weights, out, args.trials or space.trials, args.tuner, verbose=1,
                                         storage_url=args.storage, study_name=args.study_name)
    except KeyboardInterrupt:
        err.print(f"interrupted: finished trials are saved in {folder}; rerun the same command to resume")
        return EXIT_INTERRUPTED
    console.print(leaderboard(records, title=f"leaderboard: keras-tuner {args.tuner}"))
    return _finish(out, args, console, err, folder / BEST_MODEL, f"; autotl predict {folder} IMAGE")


class _CtrlC:
    """Ctrl-C once: finish the running trial, then stop.  Twice: stop now."""

    def __init__(self, err: Any) -> None:
        self.err, self.count, self.previous = err, 0, None

    def __enter__(self) -> "_CtrlC":
        import signal

        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        self.err.print("Ctrl-C: finishing the running trial, then stopping (press Ctrl-C again to stop now)")

    def pressed(self) -> bool:
        return self.count > 0


def cmd_predict(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from autotl.predict import predict_any

    failed = 0
    for path, label, prob in predict_any(args.run, args.images):
        if prob is None:
            failed += 1
            _console(stderr=True).print(f"{path}: cannot read: {label}")
        else:
            print(f"{path}\t{label}\t{prob:.4f}")  # tab-separated: for scripts, never wrapped
    return 1 if failed else 0


def _check_plugins(args: argparse.Namespace) -> int:
    """Self-test a plugin: the contract checks of :mod:`autotl.testing`, one line per check."""
    from autotl.registry import get_registry
    from autotl.testing import check_backbone

    if not args.target:
        raise UsageError("give a backbone name or a plugin module: autotl plugins check NAME_OR_MODULE")
    registry = get_registry(args.plugin)
    if args.target in registry.backbones:
        specs = [registry.backbones[args.target]]
    else:
        registry = get_registry([*args.plugin, args.target])
        specs = [spec for spec in registry.backbones.values() if spec.plugin == args.target]
        if not specs:
            raise UsageError(f"{args.target!r} is neither a backbone name nor a plugin module that provides backbones; `autotl plugins` lists them")
    _quiet_tensorflow()
    failed = 0
    for spec in specs:
        try:
            for line in check_backbone(spec):
                print(f"{spec.name}: {line}")
            print(f"{spec.name}: skipped: classifying a known picture needs ImageNet weights with the top, which autotl does not load (include_top=False)")
        except AssertionError as exc:
            failed += 1
            print(f"{spec.name}: FAILED: {exc}")
    print(f"{len(specs) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.table import Table

    if args.action == "check":
        return _check_plugins(args)
    from autotl.registry import get_registry
    from autotl.weights import WeightsSource, resolve_weights

    registry = get_registry(args.plugin)
    weights = WeightsSource.parse(args.weights_dir, args.weights)
    table = Table(title=f"backbones (weights: {weights.describe()})")
    for col in ("name", "input", "also accepts", "preprocessing", "weights offline", "plugin"):
        table.add_column(col, no_wrap=col in ("name", "plugin"))
    for name, spec in sorted(registry.backbones.items()):
        try:
            arg = resolve_weights(spec, weights).argument
            ok = "random" if arg is None else "downloads" if arg == "imagenet" else "yes"
        except UsageError as exc:
            ok = "hash mismatch" if "SHA-256" in str(exc) else "missing"
        others = ", ".join(str(h) if h == w else f"{h}x{w}" for h, w in spec.accepted_sizes if (h, w) != spec.input_size)
        table.add_row(name, f"{spec.input_size[0]}x{spec.input_size[1]}", others or "-", spec.preprocessing.describe(), ok, spec.plugin)
    console = _console()
    console.print(table)
    for name, sample in sorted(registry.samples.items()):
        console.print(f"sample {name}: {sample.description} [{sample.plugin}]")
    return 0


COMMANDS = {"search": cmd_search, "predict": cmd_predict, "plugins": cmd_plugins, "report": cmd_report, "lineage": cmd_lineage, "export": cmd_export}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except AutotlError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        print("autotl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the environment failed us: say it in one line, if it is one we know
        message = _environment_error(exc)
        if message is None:
            raise
    print(f"autotl: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _environment_error(exc: BaseException) -> Optional[str]:
    """One line for a full disk, a locked database or an unwritable file; None for a real bug."""
    import errno

    resume = "finished trials are saved; rerun the same command to resume"
    text = first_line(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"no space left to write{where}: free some space or pass --out on another disk; {resume}"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot write{where} ({exc.strerror}); pass a writable --out"
        return None
    if type(exc).__name__ == "OperationalError":  # SQLAlchemy's, from the study's database
        if "locked" in text:
            return f"the study's database is locked by another program ({text}); close it, or wait and rerun; {resume}"
        if "disk is full" in text or "No space" in text:
            return f"the study's database cannot grow: the disk is full; free some space; {resume}"
        return f"the study's database failed ({text}); check --storage and that the server is up; {resume}"
    return None


if __name__ == "__main__":
    sys.exit(main())
