"""The command line: arguments into :mod:`autotl.api` calls, and the only place exceptions become exit codes.

Every ``AutotlError`` becomes one line on stderr and exit code 2; Ctrl-C says
how to resume and exits 130.  Heavy libraries load inside the commands, so
``autotl --help`` and ``autotl plugins`` answer at once.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional, get_args

from pydantic import BeforeValidator

from autotl._version import __version__
from autotl.engine.options import GROUPS, Flag, SearchOptions, choices, flags
from autotl.errors import AutotlError, PluginError, UsageError, first_line

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo
    from rich.console import Console

    from autotl.api import Run

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors said as every other autotl error: one line, exit code 2."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"autotl: error: {message}; see `{self.prog} --help`\n")


def _add_option(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    help: Optional[str] = None,
    *,
    default_from_model: bool = False,
) -> None:
    """The flag of the search option ``name``, derived from :class:`SearchOptions` (type, choices, help).

    Left out, a search's flag is absent from the namespace, so the model's default applies
    (``default_from_model``); other commands that share the flag get the model's default.
    """
    info = SearchOptions.model_fields[name]
    flag = flags()[name]
    text = (help or info.description or "").replace("%", "%%")
    shown = info.default not in (None, ()) and not isinstance(info.default, bool)
    shown = shown and "default" not in text
    kwargs: dict[str, Any] = {
        "help": f"{text} (default {info.default})" if shown else text,
        "default": argparse.SUPPRESS if default_from_model else _plain(info.default),
    }
    if flag.positional:
        p.add_argument(name, nargs="?", metavar=flag.metavar, **kwargs)
        return
    if info.annotation is bool:
        kwargs["action"] = "store_false" if info.default else "store_true"
    else:
        kwargs.update(_value_kwargs(name, info, flag))
    p.add_argument(flag.flag(name), *flag.aliases, dest=name, **kwargs)


def _value_kwargs(name: str, info: FieldInfo, flag: Flag) -> dict[str, Any]:
    """How a flag with a value reads it: its choices, else int, float or the text (which the model parses)."""
    out: dict[str, Any] = {"metavar": flag.metavar}
    if flag.repeat:
        out["action"] = "append"
    if choices(name):
        out["choices"] = list(choices(name))
        out.pop("metavar") if flag.metavar is None else None
        return out
    own_parser = any(isinstance(m, BeforeValidator) for m in info.metadata)
    kinds = {a for a in get_args(info.annotation) if a is not type(None)} or {info.annotation}
    if not own_parser and kinds in ({int}, {float}):
        out["type"] = kinds.pop()
    return out


def _plain(value: object) -> object:
    """A default argparse can hold: a list for a tuple (an appending flag adds to it)."""
    return list(value) if isinstance(value, tuple) else value


def _add_plugin_args(p: argparse.ArgumentParser) -> None:
    _add_option(p, "plugins")


def _add_weights_args(p: argparse.ArgumentParser, what: str = "") -> None:
    info = SearchOptions.model_fields["weights_dir"].description or ""
    _add_option(p, "weights_dir", info.removesuffix(")") + what + ")" if what else None)
    _add_option(p, "weights")


def _add_study_args(p: argparse.ArgumentParser) -> None:
    _add_option(p, "storage")
    _add_option(p, "study_name")


def _add_rebuild_args(p: argparse.ArgumentParser, data_help: str) -> None:
    """What a command that rebuilds a run's models needs besides the run: its data if it moved, its
    study, and the plugins and weights its backbones came from (default: the search's)."""
    p.add_argument("--data", metavar="DATA_DIR", help=data_help)
    _add_study_args(p)
    _add_plugin_args(p)
    _add_weights_args(p, " -- default: what the search used")


def _search_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``autotl search``: one flag per field of :class:`SearchOptions`, in the model's groups."""
    s = sub.add_parser(
        "search",
        help="run or resume a search",
        description="Create the study in --out, or resume it, and run trials until it holds --trials finished ones.",
    )
    groups = {key: s.add_argument_group(title) for key, title in GROUPS.items()}
    for name, flag in flags().items():
        _add_option(groups[flag.group], name, default_from_model=True)


def search_options(args: argparse.Namespace) -> dict[str, Any]:
    """The search options the command line gave (the others keep the model's defaults)."""
    return {name: value for name, value in vars(args).items() if name in SearchOptions.model_fields}


def _doctor_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    d = sub.add_parser(
        "doctor",
        help="find label errors, duplicates, leakage and outliers in a data folder",
        description="Check DATA_DIR with one backbone's pooled features (from the feature cache of --out, or "
        "added to it): exact and near duplicates, leakage between train/val/test, label issues (cleanlab on "
        "out-of-fold heads), outliers, unreadable, tiny and odd-mode files. Writes RUN_DIR/health/issues.csv, "
        "health.json and report.html; the data folder is only read.",
    )
    d.add_argument("data", metavar="DATA_DIR", help="folder of class subfolders, as for search")
    d.add_argument(
        "--out",
        metavar="RUN_DIR",
        help="run folder for the manifest, the feature cache and health/ (default: runs/<data name>, "
        "where a search finds them again)",
    )
    d.add_argument(
        "--backbone",
        metavar="NAME",
        help="whose pooled features to compare (default: the cheapest with pretrained weights here)",
    )
    d.add_argument(
        "--space",
        default="default",
        metavar="NAME_OR_FILE",
        help="the search space whose val_fraction, seed and test_fraction split the data (default: default)",
    )
    _add_option(d, "exclude", "check the data without the files this CSV's path column lists")
    d.add_argument(
        "--near",
        type=float,
        metavar="F",
        help="near duplicates: closer than F x the median nearest-neighbour distance (default 0.35)",
    )
    d.add_argument(
        "--folds", type=int, metavar="K", help="folds of the out-of-fold heads (default 5)"
    )
    d.add_argument(
        "--top", type=int, default=5, metavar="N", help="findings shown per kind (default 5)"
    )
    _add_option(d, "cache_dir")
    _add_option(d, "decode_workers")
    _add_weights_args(d)
    _add_plugin_args(d)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="autotl",
        description="Search pretrained image backbones for the best transfer-learned classifier.",
    )
    parser.add_argument("--version", action="version", version=f"autotl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _search_parser,
        _doctor_parser,
        _predict_parser,
        _plugins_parser,
        _report_parser,
        _lineage_parser,
        _export_parser,
        _ensemble_parser,
        _integration_parsers,
    ):
        add(sub)
    return parser


def _predict_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "predict", help="classify images with a run's best model or any exported model"
    )
    p.add_argument(
        "run",
        metavar="MODEL",
        help="run folder, export folder, .keras file, SavedModel folder, .tflite or .onnx file",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")


def _plugins_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    pl = sub.add_parser(
        "plugins",
        help="list the backbones and samples that plugins provide, or check one",
        description="`autotl plugins` lists every backbone; `autotl plugins check NAME_OR_MODULE` runs the plugin "
        "contract checks (with --weights-dir DIR also on the base loaded from its weight file, hash checked).",
        epilog="exit status of check: 0 every check passed, 1 a check failed, 2 usage error "
        "(an unknown name, a plugin module that cannot be loaded)",
    )
    pl.add_argument("action", nargs="?", choices=["list", "check"], default="list")
    pl.add_argument(
        "target",
        nargs="?",
        metavar="NAME_OR_MODULE",
        help="with check: a backbone name, or a plugin module (all its backbones)",
    )
    _add_plugin_args(pl)
    _add_weights_args(pl)


def _report_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    r = sub.add_parser(
        "report",
        help="write report.html, report.md and report.json for a run",
        description="Summarise a run folder's study: leaderboard, learning curves, the search, the best model "
        "on the validation set, lineage. Safe while the search is still running.",
    )
    r.add_argument("run", metavar="RUN_DIR")
    _add_study_args(r)


def _lineage_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    ln = sub.add_parser(
        "lineage",
        help="say which trial, backbone, weights and data made a model file",
        description="Look a model file up by the SHA-256 of its bytes in the study database (a copied or renamed file is found too).",
    )
    ln.add_argument("model", metavar="MODEL_FILE")
    ln.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL (default: study.db beside the file or in its run folder)",
    )
    ln.add_argument("--json", action="store_true", help="print the whole record as JSON")


def _export_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    e = sub.add_parser(
        "export",
        help="export a run's model for production, with parity checked",
        description="Export the best trial's model (or --trial N) as .keras, a SavedModel and TFLite (and ONNX with "
        "--format onnx), check each predicts as the Keras model does on the validation images, and write a model card.",
    )
    e.add_argument("run", metavar="RUN_DIR")
    _export_model_args(e)
    e.add_argument(
        "--format",
        metavar="LIST",
        help="comma-separated formats: keras, savedmodel, tflite, onnx (default: keras,savedmodel,tflite; "
        "onnx needs pip install 'autotl[onnx]')",
    )
    e.add_argument(
        "--quantize",
        metavar="int8",
        help="also write int8 models of the named formats: model_int8.tflite (fully integer), "
        "model_int8.onnx (ONNX Runtime's static quantization)",
    )
    e.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/export)")
    e.add_argument(
        "--version",
        metavar="N|next",
        help="write the new version folder DIR/N/ (next: one more than the highest there) for a model "
        "server that watches DIR (serving/java, TF Serving); an existing version is never rewritten",
    )
    e.add_argument(
        "--mlflow",
        metavar="URI",
        help="register each exported format in this MLflow server's model registry",
    )
    _add_rebuild_args(
        e, "the search's data folder, if it moved (parity runs on its validation images)"
    )


def _export_model_args(e: _Parser) -> None:
    """Which model ``autotl export`` writes: a trial (refitted if its layers were not kept), or the ensemble."""
    e.add_argument(
        "--trial", type=int, metavar="N", help="trial number (default: the best complete trial)"
    )
    e.add_argument(
        "--pick",
        metavar="CONDITION",
        help='the best trial that meets CONDITION, e.g. "latency_ms<=15" or '
        '"latency_ms<=15,accuracy>=0.9" (<=, <, >=, >, ==; objectives or recorded metrics)',
    )
    e.add_argument(
        "--ensemble",
        action="store_true",
        help="export the run's ensemble of its top trials (`autotl ensemble`) as one model",
    )
    e.add_argument(
        "--tta",
        metavar="flip|none",
        help="test-time augmentation built into the model: flip averages the image and its mirror",
    )
    e.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="refuse a trial whose layers the search did not keep instead of refitting it from the "
        "feature cache (a refit must reproduce the trial's recorded score, and is stored for the next export)",
    )


def _integration_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``autotl mlflow`` and ``autotl dashboard``: a run in the user's other tools."""
    m = sub.add_parser(
        "mlflow",
        help="log a run's study to an MLflow tracking server (only what is not logged yet)",
        description="A parent run for the study, a nested run per finished trial (params, per-epoch metrics of "
        "both phases, gate, backbone, weights hash) and the best model registered with its lineage as tags. "
        "Needs pip install 'autotl[mlflow]'.",
    )
    m.add_argument("run", metavar="RUN_DIR")
    m.add_argument("uri", metavar="URI", help="tracking URI, e.g. http://127.0.0.1:5000")
    m.add_argument(
        "--experiment", help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else autotl)"
    )
    m.add_argument("--model-name", help="registered model name (default: the run folder's name)")
    _add_study_args(m)
    d = sub.add_parser(
        "dashboard",
        help="open a run's study in optuna-dashboard",
        description="Serve the run's study with optuna-dashboard (pip install 'autotl[dashboard]') until Ctrl-C.",
    )
    d.add_argument("run", metavar="RUN_DIR")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    d.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    _add_study_args(d)


def _ensemble_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    en = sub.add_parser(
        "ensemble",
        help="choose an ensemble of a run's top trials and compare it with the best single model",
        description="Greedy forward selection with replacement (Caruana et al., 2004) over the validation "
        "probabilities of the run's top K trials (those whose layers were not kept are refitted from the feature "
        "cache and checked against their recorded score); prints the best single model, the ensemble and each with "
        "flip TTA side by side (validation and test accuracy, TFLite latency) and saves the selection for "
        "`autotl export --ensemble` and the report.",
    )
    en.add_argument("run", metavar="RUN_DIR")
    en.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="choose among the K best trials (default: the space's ensemble.top_k, else 8)",
    )
    en.add_argument(
        "--tta", default="flip", metavar="flip|none", help="also measure flip TTA (default flip)"
    )
    en.add_argument(
        "--init",
        type=int,
        default=1,
        metavar="N",
        help="start from up to the N best trials, how many chosen on validation (default 1)",
    )
    en.add_argument(
        "--bags",
        type=int,
        default=0,
        metavar="B",
        help="bagged selection over B random halves of the candidates (default 0: off)",
    )
    en.add_argument(
        "--no-latency", action="store_true", help="do not time each model through TFLite"
    )
    _add_rebuild_args(en, "the search's data folder, if it moved")


def cmd_search(args: argparse.Namespace) -> int:
    from autotl.api import search
    from autotl.ui import CtrlC, SearchView, console

    out, err = console(), console(stderr=True)
    presses = CtrlC(err.print)
    view = SearchView(out, err)
    resume = "finished trials are saved; rerun the same command to resume"
    try:
        with presses:
            run = search(
                on_event=view,
                should_stop=presses.pressed,
                command=shlex.join(["autotl", *sys.argv[1:]]),
                **search_options(args),
            )
    except KeyboardInterrupt:
        err.print(f"stopped now: the running trial is marked failed; {resume}")
        return EXIT_INTERRUPTED
    finally:
        view.close()
    if presses.pressed():
        err.print(f"stopped after the current trial; {resume}")
        return EXIT_INTERRUPTED
    _say_found(run, out)
    return 0


def _say_found(run: Run, out: Console) -> None:
    """The end of a search: its leaderboard, where the report and the best model are, or why there is none."""
    from autotl.ui import leaderboard

    if run.engine == "optuna":
        out.print(leaderboard(run.study))
    if run.report_paths:
        out.print(f"report: {run.report_paths['html']}")
    best = run.folder.best_model(run.engine)
    if best.is_file():
        how = "" if run.engine == "optuna" else f"; autotl predict {best.parent} IMAGE"
        out.print(f"best model: {best}  (classes in {run.folder.classes_file(run.engine)}{how})")
    elif run.engine == "optuna" and run.study.get_trials(deepcopy=False) and run.best_trial is None:
        out.print(f"no best model: {run.no_best_reason()}")
    else:
        out.print(
            "no trial finished, so there is no best model yet; rerun the same command to resume"
        )


def cmd_doctor(args: argparse.Namespace) -> int:
    from autotl.api import doctor
    from autotl.ui import CountProgress, console, health_table

    out, err = console(), console(stderr=True)
    scans: list[CountProgress] = []

    def on_event(e: dict[str, Any]) -> None:
        if "scan" in e:
            if not scans:
                scans.append(CountProgress(err, e["scan"]))
            if scans[-1].update(e["done"], e["total"]):
                scans.clear()
        elif "warning" in e:
            err.print(f"[yellow]warning:[/] {e['warning']}")
        elif "info" in e or "status" in e:
            err.print(f"[dim]{e.get('info') or e['status']}[/]")

    health = doctor(
        args.data,
        out=args.out,
        space=args.space,
        backbone=args.backbone,
        weights_dir=args.weights_dir,
        weights=args.weights,
        plugins=args.plugins,
        exclude=args.exclude,
        decode_workers=args.decode_workers,
        cache_dir=args.cache_dir,
        near=args.near,
        folds=args.folds,
        on_event=on_event,
    )
    out.print(health_table(health, args.top))
    for note in health.notes:  # a step left out (too many images for it), said once
        print(f"note: {note}")
    folder = health_folder(args)
    print(f"issues: {folder / 'issues.csv'}  ({len(health.findings)} rows)")
    print(f"report: {folder / 'report.html'}")
    if health.findings:
        print(f"to train without them: autotl search {args.data} --exclude {folder / 'issues.csv'}")
    return 0


def health_folder(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from autotl.run.folder import RunFolder

    out = Path(args.out) if args.out else Path("runs") / Path(args.data).resolve().name
    return RunFolder(out).health_dir


def cmd_predict(args: argparse.Namespace) -> int:
    from autotl.predict import predict_any

    failed = 0
    for path, label, prob in predict_any(args.run, args.images):
        if prob is None:  # the others are still classified; each bad one is one line, and exit 2
            failed += 1
            print(f"autotl: error: {path}: {label}", file=sys.stderr)
        else:
            print(f"{path}\t{label}\t{prob:.4f}")  # tab-separated: for scripts, never wrapped
    return EXIT_USAGE if failed else 0


def _check_targets(args: argparse.Namespace) -> list[Any]:
    """The specs ``plugins check TARGET`` means: one backbone by name, or every backbone of a plugin module."""
    from autotl.backbones.registry import get_registry

    if not args.target:
        raise UsageError(
            "give a backbone name or a plugin module: autotl plugins check NAME_OR_MODULE"
        )
    registry = get_registry(args.plugins)
    for message in registry.warnings:  # a broken installed plugin: said, and the check goes on
        print(f"warning: {message}", file=sys.stderr)
    if args.target in registry.backbones:
        return [registry.backbones[args.target]]
    neither = (
        f"{args.target!r} is neither a backbone name nor a plugin module that provides backbones"
    )
    try:
        registry = get_registry([*args.plugins, args.target])
    except PluginError:
        raise
    except UsageError as exc:  # no such module
        raise UsageError(
            f"{neither} ({first_line(exc).split(' (')[-1]}; `autotl plugins` lists the backbones"
        ) from None
    specs = [spec for spec in registry.backbones.values() if spec.plugin == args.target]
    if not specs:
        raise UsageError(f"{neither}; `autotl plugins` lists them")
    return specs


def _check_plugins(args: argparse.Namespace) -> int:
    """Self-test a plugin: the contract checks of :mod:`autotl.testing`, one line per check.

    Exit status 0 when every check passed, 1 when one failed (2, through
    :func:`main`, for a usage error).  With ``--weights-dir`` (or ``--weights
    imagenet``) the weight file is hashed and loaded too, and the loaded base checked.
    """
    from autotl.backbones.weights import WeightsSource
    from autotl.testing import check_backbone, check_pretrained

    specs = _check_targets(args)
    source = (
        WeightsSource.parse(args.weights_dir, args.weights)
        if args.weights_dir or args.weights == "imagenet"
        else None
    )
    failed = 0
    for spec in specs:
        try:
            lines = check_backbone(spec)
            if source is not None:
                lines += check_pretrained(spec, source)[1]
            for line in lines:
                print(f"{spec.name}: {line}")
            if source is None:
                print(
                    f"{spec.name}: skipped: weights not loaded; pass --weights-dir DIR to hash and load its weight file"
                )
            print(
                f"{spec.name}: skipped: classifying a known picture needs ImageNet weights with the top, which autotl does not load (include_top=False)"
            )
        except (AssertionError, UsageError) as exc:
            failed += 1
            print(f"{spec.name}: FAILED: {first_line(exc)}")
    print(f"{len(specs) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_plugins(args: argparse.Namespace) -> int:
    if args.action == "check":
        return _check_plugins(args)
    from rich.table import Table

    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import WeightsMismatch, WeightsSource, resolve_weights
    from autotl.ui import console

    registry = get_registry(args.plugins)
    for message in registry.warnings:
        console(stderr=True).print(f"[yellow]warning:[/] {message}")
    weights = WeightsSource.parse(args.weights_dir, args.weights)
    table = Table(title=f"backbones (weights: {weights.describe()})")
    for col in ("name", "input", "also accepts", "preprocessing", "weights offline", "plugin"):
        table.add_column(col, no_wrap=col in ("name", "plugin"))
    for name, spec in sorted(registry.backbones.items()):
        try:
            arg = resolve_weights(spec, weights).argument
            ok = "random" if arg is None else "downloads" if arg == "imagenet" else "yes"
        except WeightsMismatch:
            ok = "hash mismatch"
        except UsageError:
            ok = "missing" if weights.kind == "dir" else "no download"
        others = ", ".join(
            str(h) if h == w else f"{h}x{w}"
            for h, w in spec.accepted_sizes
            if (h, w) != spec.input_size
        )
        table.add_row(
            name,
            f"{spec.input_size[0]}x{spec.input_size[1]}",
            others or "-",
            spec.preprocessing.describe(),
            ok,
            spec.plugin,
        )
    out = console()
    out.print(table)
    for name, sample in sorted(registry.samples.items()):
        out.print(f"sample {name}: {sample.description} [{sample.plugin}]")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from autotl.api import Run

    run = Run(args.run, storage=args.storage, study_name=args.study_name)
    # a folder that is no run, a damaged or foreign database: said before TensorFlow loads
    _ = run.study
    paths = run.report()
    for key in ("html", "md", "json"):
        print(paths[key])
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from autotl.run.lineage import describe, describe_deployment, lineage_of

    record = lineage_of(args.model, args.storage)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    print(describe(record, str(args.model)))
    for deployment in record["deployments"]:
        print(describe_deployment(deployment))
    return 0


def _open_run(args: argparse.Namespace) -> Any:
    """The run folder ``args.run`` with the study, plugins and weights the options name."""
    from autotl.api import Run

    return Run(
        args.run,
        storage=args.storage,
        study_name=args.study_name,
        plugins=getattr(args, "plugins", ()),  # commands without --plugin/--weights-dir
        weights_dir=getattr(args, "weights_dir", None),
        weights=getattr(args, "weights", None),
    )


def cmd_export(args: argparse.Namespace) -> int:
    from autotl.ui import console

    err = console(stderr=True)
    run = _open_run(args)
    # a folder that is no run, a damaged or foreign database: said before TensorFlow loads
    _ = run.study
    result = run.export(
        args.format,
        args.out,
        trial=args.trial,
        quantize=args.quantize,
        data=args.data,
        on_event=lambda m: err.print(f"[dim]{m}[/]"),
        pick=args.pick,
        ensemble=args.ensemble,
        tta=args.tta,
        version=args.version,
        mlflow=args.mlflow,
        refit=args.refit,
    )
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    what = f"trial {result.trial}"
    if result.variant:
        what = f"{result.variant['name']} (trials {', '.join(map(str, result.variant['members']))})"
    print(
        f"exported {what} to {result.out_dir} (parity on {result.parity['images']} validation images)"
    )
    for fmt, r in result.parity["formats"].items():
        print(f"{fmt}\ttop-1 agreement {r['top1_agreement']:.1%}\tmax |dp| {r['max_abs_diff']:.2e}")
    test = result.parity.get("test_score") or {}
    if test.get("images"):
        val = test.get("validation_accuracy")
        print(
            f"test accuracy {test['accuracy']:.4f} ({test['correct']}/{test['images']} images the search never saw, "
            f"95% CI {test['ci95'][0]:.4f}-{test['ci95'][1]:.4f}; {test['split']}); validation accuracy "
            + (f"{val:.4f}" if val is not None else "-")
        )
    for fmt, version in result.registered.items():
        print(f"registered {fmt} in MLflow as version {version}")
    return 0


def cmd_mlflow(args: argparse.Namespace) -> int:
    from autotl.integrations.mlflow import require_mlflow

    require_mlflow()  # a missing extra is said first
    logged = _open_run(args).log_mlflow(
        args.uri, experiment=args.experiment, model_name=args.model_name
    )
    print(
        f"MLflow {args.uri}: experiment {logged.experiment_id}, study run {logged.parent_run_id}, "
        f"{len(logged.new)} trial(s) logged now, {len(logged.trial_runs)} in all"
    )
    if logged.model_version is not None:
        print(f"best model: registered model {logged.model_name!r} version {logged.model_version}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from autotl.integrations.dashboard import require_dashboard, serve

    require_dashboard()
    run = _open_run(args)
    store = run.folder.artifact_store(
        run.study.user_attrs.get("artifacts")
    )  # a bad folder: one line
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    serve(run.storage_url, host=args.host, port=args.port, artifact_store=store)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from autotl.ui import console, ensemble_table

    err = console(stderr=True)
    run = _open_run(args)
    selection = run.ensemble(
        args.top_k,
        tta=args.tta,
        latency=not args.no_latency,
        init=args.init,
        bags=args.bags,
        data=args.data,
        on_event=lambda m: err.print(f"[dim]{m}[/]"),
    )
    console().print(ensemble_table(selection))
    for note in selection.notes:
        err.print(f"[yellow]note:[/] {note}")
    print(
        f"saved in {run.folder.ensemble_selection}; `autotl export {run.path} --ensemble` exports it"
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "search": cmd_search,
    "doctor": cmd_doctor,
    "predict": cmd_predict,
    "plugins": cmd_plugins,
    "report": cmd_report,
    "lineage": cmd_lineage,
    "export": cmd_export,
    "ensemble": cmd_ensemble,
    "mlflow": cmd_mlflow,
    "dashboard": cmd_dashboard,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from autotl.ui import quiet_tensorflow_imports

    args = build_parser().parse_args(argv)
    quiet_tensorflow_imports()  # TensorFlow loads only if a command needs it, and quietly
    try:
        return COMMANDS[args.command](args)
    except AutotlError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        print("autotl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the environment failed us: say it in one line, if it is one we know
        known = _environment_error(exc)
        if known is None:
            raise
        message = known
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"autotl: error: {one_line}", file=sys.stderr)
    return EXIT_USAGE


def _environment_error(exc: BaseException) -> Optional[str]:
    """One line for a full disk, a locked database or an unwritable file, found anywhere in the exception's
    chain (Optuna wraps the database's errors); None for a real bug."""
    seen: set[int] = set()
    cause: Optional[BaseException] = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        message = _one_environment_error(cause)
        if message is not None:
            return message
        cause = cause.__cause__ or cause.__context__
    return None


def _one_environment_error(exc: BaseException) -> Optional[str]:
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
