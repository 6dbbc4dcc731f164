"""``export``: the chosen trial's model in every format, staged, verified, then installed; and its lineage recorded."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotl.data import resize_images
from autotl.errors import UsageError, first_line
from autotl.export._card import _write_card
from autotl.export._common import (
    CARD_FILE,
    FORMATS,
    KERAS_FILE,
    LABELS_FILE,
    OWNED,
    PARITY_FILE,
    PARITY_IMAGES,
    QUANTIZATIONS,
    REPRESENTATIVE_IMAGES,
    SAVEDMODEL_DIR,
    TFLITE_FILE,
    TFLITE_INT8_FILE,
    ExportParityError,
    ExportResult,
    _input_size,
    _quiet,
)
from autotl.export._holdout import test_split_score
from autotl.export._parity import _check_reproduces, verify_export
from autotl.export._run import _dataset, _open_run, _Run
from autotl.export._savedmodel import write_savedmodel
from autotl.export._tflite import convert as tflite_convert


def _evenly(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    items = [
        f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)
    ]
    items = [f for f in items if f]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise UsageError(
            f"unknown export format {unknown[0]!r}; choose from {', '.join(FORMATS)} (comma-separated)"
            if unknown
            else f"no export format given; choose from {', '.join(FORMATS)} (comma-separated)"
        )
    return tuple(dict.fromkeys(items))


def export(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    formats: str | Sequence[str] = FORMATS,
    trial: Optional[int] = None,
    quantize: Optional[str] = None,
    storage_url: Optional[str] = None,
    study_name: str = "autotl",
    data: Optional[str] = None,
    plugins: Sequence[str] = (),
    weights: Any = None,
    registry: Any = None,
    on_event: Optional[Callable[[str], None]] = None,
) -> ExportResult:
    """Export one trial's model of a run (the best by default) in ``formats``, and prove every format predicts as the Keras model does.

    A trial other than the best has its model assembled from its stored layers,
    which needs its backbone's plugin (``plugins`` or ``registry``) and weights
    (``weights``, an ``autotl.weights.WeightsSource``; default: what run.json
    records).  ``data`` replaces the search's data folder when it moved.

    Before anything is written, the Keras model must reproduce the validation
    accuracy and loss the search recorded for the trial (when the data is the
    search's); then every format must predict what the Keras model predicts.
    Raises UsageError for bad arguments and ExportParityError otherwise.
    """
    _quiet()
    say = on_event or (lambda _msg: None)
    formats = parse_formats(formats)
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UsageError(f"unknown quantization {quantize!r}; the only one is int8")
    if quantize and "tflite" not in formats:
        raise UsageError("--quantize int8 quantizes the TFLite model; add tflite to --format")
    if trial is not None and trial < 0:
        raise UsageError(f"--trial must be a trial number (0 or more), got {trial}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; pass a folder")
    run = _open_run(run_dir, trial, storage_url, study_name, plugins, registry, weights, say)
    notes: list[str] = []
    dataset, same_data = _dataset(run, data, plugins, notes)

    import keras

    say(f"loading trial {run.trial.number}: {run.model_file}")
    model = keras.saving.load_model(run.model_file, safe_mode=True)
    size = _input_size(model)
    if int(model.output_shape[-1]) != len(run.class_names):
        raise UsageError(
            f"{run.model_file} predicts {model.output_shape[-1]} classes but the run names {len(run.class_names)}; the run folder is inconsistent"
        )
    say(f"checking the model reproduces trial {run.trial.number}'s validation score")
    reproduced = _check_reproduces(model, run, dataset, size, same_data)
    say(f"scoring trial {run.trial.number} on the test split, once")
    test_score = test_split_score(model, run, dataset, size)
    picked = _evenly(len(dataset.val), PARITY_IMAGES)
    images = [dataset.val.load(i) for i in picked]
    labels = dataset.val.labels[picked]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    seconds: dict[str, float] = {}
    try:
        (staging / LABELS_FILE).write_text(
            "".join(f"{c}\n" for c in run.class_names), encoding="utf-8"
        )
        if "keras" in formats:
            shutil.copyfile(run.model_file, staging / KERAS_FILE)
        if "savedmodel" in formats:
            say("writing the SavedModel")
            start = time.perf_counter()
            write_savedmodel(
                model, run.class_names, size, staging / SAVEDMODEL_DIR, staging / LABELS_FILE
            )
            seconds["savedmodel"] = time.perf_counter() - start
        if "tflite" in formats:
            say("converting to TFLite")
            start = time.perf_counter()
            (staging / TFLITE_FILE).write_bytes(tflite_convert(model, size))
            seconds["tflite"] = time.perf_counter() - start
            if quantize == "int8":
                chosen = _evenly(len(dataset.train), REPRESENTATIVE_IMAGES)
                say(f"quantizing to int8 on {len(chosen)} training images")
                start = time.perf_counter()
                # what the model's Resizing feeds on
                representative = np.concatenate(
                    [resize_images(dataset.train.load(i)[None], size) for i in chosen]
                )
                (staging / TFLITE_INT8_FILE).write_bytes(
                    tflite_convert(model, size, representative)
                )
                seconds["tflite_int8"] = time.perf_counter() - start
        say(f"checking parity on {len(images)} validation images")
        try:
            parity = verify_export(staging, model, images, labels)
        except ExportParityError as exc:
            parity = {
                **(exc.parity or {}),
                "search_score": reproduced,
                "test_score": test_score,
                "seconds": seconds,
                "error": str(exc),
            }
            _write_parity(staging, parity, run, dataset)
            failed = out_dir.parent / f"{out_dir.name}.unverified"
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(staging, failed)
            raise ExportParityError(
                f"{exc}; nothing written to {out_dir}, the unverified files are in {failed}", parity
            ) from None
        parity = _write_parity(
            staging,
            {**parity, "search_score": reproduced, "test_score": test_score, "seconds": seconds},
            run,
            dataset,
        )
        _write_card(staging, run, dataset, same_data, parity, size, formats, quantize, notes)
        _install(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _record_lineage(run, out_dir, dataset, notes)
    files = {
        key: out_dir / name
        for key, name in (
            ("keras", KERAS_FILE),
            ("savedmodel", SAVEDMODEL_DIR),
            ("tflite", TFLITE_FILE),
            ("tflite_int8", TFLITE_INT8_FILE),
            ("labels", LABELS_FILE),
            ("model_card", CARD_FILE),
            ("parity", PARITY_FILE),
        )
        if (out_dir / name).exists()
    }
    return ExportResult(out_dir, run.trial.number, run.class_names, files, parity, size, notes)


def _record_lineage(run: _Run, out_dir: Path, dataset: Any, notes: list[str]) -> None:
    """Record the exported files in the study's lineage tables (``autotl lineage FILE`` finds them); never fails the export."""
    try:
        from autotl.lineage import record_model

        summary = run.data_summary or {"source": dataset.source, "fingerprint": dataset.fingerprint}
        for name in (KERAS_FILE, f"{SAVEDMODEL_DIR}/saved_model.pb", TFLITE_FILE, TFLITE_INT8_FILE):
            if (out_dir / name).is_file():
                record_model(
                    run.storage_url,
                    run.study.study_name,
                    run.trial,
                    out_dir / name,
                    "export",
                    data=summary,
                )
    except Exception as exc:  # the verified files are in place; say why lineage is missing
        notes.append(f"lineage not recorded ({first_line(exc)[:200]})")


def _write_parity(folder: Path, parity: dict[str, Any], run: _Run, dataset: Any) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from autotl._version import __version__

    parity = {
        **parity,
        "trial": run.trial.number,
        "model": str(run.model_file.relative_to(run.run_dir)),
        "versions": {
            "autotl": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "data": {
            "source": dataset.source,
            "split": dataset.split,
            "validation_images": len(dataset.val),
            "compared": parity.get("images"),
        },
    }
    (folder / PARITY_FILE).write_text(json.dumps(parity, indent=2))
    return parity


def _install(staging: Path, out_dir: Path) -> None:
    """Put the verified files in ``out_dir``, replacing a previous export there (only the files autotl owns)."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    for name in OWNED:
        old = out_dir / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for entry in staging.iterdir():
        os.replace(entry, out_dir / entry.name)
    staging.rmdir()
