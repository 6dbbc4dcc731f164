"""``autotl export RUN_DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autotl.export._common import FORMATS
from autotl.export._export import export


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``autotl export RUN_DIR [--trial N] [--format keras,savedmodel,tflite] [--quantize int8] [--out DIR]``."""
    e = subparsers.add_parser("export", help="export a run's model for production, with parity checked",
                              description="Export the best trial's model (or --trial N) as .keras, a SavedModel and TFLite, "
                                          "check each predicts as the Keras model does on the validation images, and write a model card.")
    e.add_argument("run", metavar="RUN_DIR")
    e.add_argument("--trial", type=int, metavar="N", help="trial number (default: the best complete trial)")
    e.add_argument("--format", default=",".join(FORMATS), metavar="LIST", help=f"comma-separated formats (default: {','.join(FORMATS)})")
    e.add_argument("--quantize", metavar="int8", help="also write a fully integer-quantized model_int8.tflite")
    e.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/export)")
    e.add_argument("--data", metavar="DATA_DIR", help="the search's data folder, if it moved (parity runs on its validation images)")
    e.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite in the run folder)")
    e.add_argument("--study-name", default="autotl", help="study name in the storage (default: autotl)")
    e.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import MODULE as an autotl plugin (the trial's backbone or sample data)")
    e.add_argument("--weights-dir", metavar="DIR", help="folder of Keras weight files, to assemble a trial's model (default: what the search used)")
    e.add_argument("--weights", choices=["imagenet", "none"], help="'none' for a search run with random weights (default: what the search used)")
    return e


def cmd_export(args: argparse.Namespace) -> int:
    from autotl.cli import _console, _quiet_tensorflow

    _quiet_tensorflow()
    err = _console(stderr=True)
    from autotl.weights import WeightsSource

    out = Path(args.out) if args.out else Path(args.run) / "export"
    weights = WeightsSource.parse(args.weights_dir, args.weights) if (args.weights_dir or args.weights) else None
    result = export(args.run, out, args.format, trial=args.trial, quantize=args.quantize, storage_url=args.storage,
                    study_name=args.study_name, data=args.data, plugins=args.plugin, weights=weights,
                    on_event=lambda m: err.print(f"[dim]{m}[/]"))
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    print(f"exported trial {result.trial} to {result.out_dir} (parity on {result.parity['images']} validation images)")
    for fmt, r in result.parity["formats"].items():
        print(f"{fmt}\ttop-1 agreement {r['top1_agreement']:.1%}\tmax |dp| {r['max_abs_diff']:.2e}")
    return 0
