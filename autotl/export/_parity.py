"""Parity: every exported file loaded back and run next to the Keras model, and the Keras model against the search's score."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import numpy as np

from autotl.errors import first_line
from autotl.export._common import (
    FLOAT_TOLERANCE,
    INT8_MIN_AGREEMENT,
    REPRODUCE_LOSS_ATOL,
    REPRODUCE_LOSS_RTOL,
    ExportParityError,
)
from autotl.export._format import Format
from autotl.export._keras import keras_predictor
from autotl.export._table import formats
from autotl.scoring.metrics import accuracy, log_loss
from autotl.scoring.objective import trial_metrics

if TYPE_CHECKING:
    from autotl.data.dataset import Dataset
    from autotl.export._run import _Run


def check_parity(
    fmt: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    quantized: bool = False,
    labels: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Compare one format's probabilities with the Keras model's; raise ExportParityError outside the tolerance
    (with this format's record as ``.parity``, except when the shapes differ).

    Float formats must agree within ``FLOAT_TOLERANCE`` in every probability; a
    quantized format must give the same top-1 class on ``INT8_MIN_AGREEMENT`` of
    the images (its max difference is reported, not bounded).  NaN never passes.
    """
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    n = len(reference)
    if candidate.shape != reference.shape or n == 0:
        raise ExportParityError(
            f"{fmt} parity failed: output shape {candidate.shape} vs the Keras model's {reference.shape}"
        )
    finite = bool(np.isfinite(candidate).all())
    diff = float(np.abs(candidate - reference).max()) if finite else float("nan")
    agree = int((candidate.argmax(1) == reference.argmax(1)).sum()) if finite else 0
    record: dict[str, Any] = {
        "images": n,
        "top1_agreement": agree / n,
        "top1_agreeing": agree,
        "max_abs_diff": diff if finite else None,
        "quantized": quantized,
    }
    if labels is not None and finite:
        record["accuracy"] = accuracy(candidate, labels)
    if quantized:
        record["tolerance"] = {"min_top1_agreement": INT8_MIN_AGREEMENT}
        ok = finite and agree / n >= INT8_MIN_AGREEMENT
        need = f"needs top-1 agreement >= {INT8_MIN_AGREEMENT:.0%}"
    else:
        record["tolerance"] = {"max_abs_diff": FLOAT_TOLERANCE}
        ok = finite and diff <= FLOAT_TOLERANCE
        need = f"needs max |dp| <= {FLOAT_TOLERANCE:.0e}"
    record["passed"] = bool(ok)
    if not ok:
        shown = f"{diff:.2e}" if finite else "NaN/inf in the output"
        raise ExportParityError(
            f"{fmt} parity failed on {n} validation images: top-1 agreement {agree}/{n} ({agree / n:.1%}), "
            f"max |dp| {shown} ({need})",
            record,
        )
    return record


def verify_export(
    out_dir: str | os.PathLike[str],
    reference: Any,
    images: Sequence[np.ndarray],
    labels: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Load every exported file in ``out_dir`` back from disk and compare it with ``reference`` (a Keras model) on ``images``.

    Every row of the format table whose file is in ``out_dir`` is checked, in
    table order.  Returns the parity record (what ``parity.json`` holds).  The
    first format outside its tolerance raises ExportParityError; the record so
    far, with the failure, is on the exception as ``.parity``.
    """
    out = Path(out_dir)
    ref = keras_predictor(reference)(images)
    record: dict[str, Any] = {
        "images": len(images),
        "tolerances": {
            "float_max_abs_diff": FLOAT_TOLERANCE,
            "int8_min_top1_agreement": INT8_MIN_AGREEMENT,
        },
        "formats": {},
        "passed": False,
    }
    if labels is not None:
        record["reference_accuracy"] = accuracy(ref, labels)
    for fmt in formats():
        if (out / fmt.main).exists():
            _check_format(fmt, out / fmt.main, ref, images, labels, record)
    record["passed"] = True
    return record


def _check_format(
    fmt: Format,
    path: Path,
    ref: np.ndarray,
    images: Sequence[np.ndarray],
    labels: Optional[np.ndarray],
    record: dict[str, Any],
) -> None:
    """One format loaded back and each of its checks compared with ``ref``, into ``record["formats"]``."""
    try:
        loaded = fmt.load(path)
    except Exception as exc:  # a format that cannot even load is a parity failure too
        _raise_broken(fmt.name, fmt.main, exc, record)
    for name, predict in fmt.checks(loaded).items():
        extra = {**loaded.facts, "file": fmt.main}
        try:
            got = predict(images)
        except Exception as exc:
            _raise_broken(name, fmt.main, exc, record)
        try:
            record["formats"][name] = {
                **check_parity(name, ref, got, fmt.quantized, labels),
                **extra,
            }
        except ExportParityError as exc:
            failed = exc.parity or {"passed": False, "error": str(exc)}
            record["formats"][name] = {**failed, **extra}
            raise ExportParityError(str(exc), record) from None


def _raise_broken(name: str, file: str, exc: Exception, record: dict[str, Any]) -> NoReturn:
    reason = first_line(exc)[:200]
    record["formats"][name] = {"passed": False, "error": reason, "file": file}
    raise ExportParityError(
        f"{name} parity failed: running it raised {type(exc).__name__}: {reason}", record
    ) from None


def _check_reproduces(
    model: Any, run: _Run, dataset: Dataset, size: tuple[int, int], same_data: bool
) -> dict[str, Any]:
    """The model's accuracy and loss on the whole validation split must be the ones the search recorded for the trial.

    Parity only shows the formats agree with the Keras model; this shows the Keras
    model is the one the search scored (a model assembled from stored layers on
    the wrong backbone weights would pass parity and still be wrong).
    """
    recorded = trial_metrics(run.trial)
    recorded_acc, recorded_loss = float(recorded["val_accuracy"]), recorded.get("val_loss")
    if not same_data:
        return {
            "skipped": "the data re-read now is not known to be the search's validation split (fingerprint differs or was not recorded)"
        }
    probs = np.concatenate(
        [
            np.asarray(model.predict_on_batch(b), dtype=np.float64)
            for b in dataset.val.batches(size, 32)
        ]
    )
    y = np.asarray(dataset.val.labels)
    n = len(y)
    acc, loss = accuracy(probs, y), log_loss(probs, y)
    record = {
        "images": n,
        "accuracy": acc,
        "recorded_accuracy": recorded_acc,
        "val_loss": loss,
        "recorded_val_loss": recorded_loss,
    }
    off_by = abs(round(acc * n) - round(recorded_acc * n))
    loss_ok = recorded_loss is None or abs(
        loss - float(recorded_loss)
    ) <= REPRODUCE_LOSS_ATOL + REPRODUCE_LOSS_RTOL * abs(float(recorded_loss))
    record["passed"] = bool(
        off_by <= 1 and loss_ok
    )  # one borderline image may flip between the cached-feature and full paths
    if not record["passed"]:
        raise ExportParityError(
            f"trial {run.trial.number}'s model ({run.model_file.name}) scores accuracy {acc:.4f}, loss {loss:.4f} on the {n} validation images, "
            f"but the search recorded {recorded_acc:.4f}, {float(recorded_loss or float('nan')):.4f}: it is not the model the search scored "
            "(other backbone weights or plugin version?); nothing was exported",
            {"search_score": record, "passed": False},
        )
    return record
