"""Exporting a run's model for production, with parity verified rather than assumed.

``autotl export RUN_DIR --out DIR`` writes, for the best trial (or ``--trial N``):

* ``model.keras``: the trial's model, loadable with ``keras.saving.load_model(path,
  safe_mode=True)`` where autotl is not installed (built-in layers only);
* ``savedmodel/``: a TensorFlow SavedModel for TF Serving (and Java, Go, C++) with two
  signatures: ``serving_default`` takes ``images``, uint8 ``[batch, height, width, 3]``
  of any size; ``serving_bytes`` takes ``image_bytes``, a string ``[batch]`` of encoded
  JPEG/PNG/GIF/BMP files.  Both return ``probabilities`` (float32 ``[batch, classes]``)
  and ``classes`` (string ``[batch]``, the top-1 name).  ``assets/labels.txt`` holds the
  class names;
* ``model.tflite`` (float32 ``[1, h, w, 3]`` pixels 0..255, already resized to the
  backbone's size) and, with ``quantize="int8"``, ``model_int8.tflite`` (uint8 in and
  out, calibrated on up to 100 training images);
* ``labels.txt``, ``MODEL_CARD.md`` and ``parity.json``.

Nothing is assumed.  First the Keras model must reproduce, on the whole validation
split, the accuracy and loss the search recorded for the trial (a model assembled
from stored layers on other backbone weights would fail here).  Then every file is
built in a staging folder, loaded back from disk and run on the validation images
next to the Keras model.  Only when every format agrees (float formats to 1e-4 in
every probability, int8 on the top-1 class of at least 98% of the images) does the
staging folder become ``DIR``; otherwise it is kept as ``DIR.unverified`` and
:class:`ExportParityError` says which format failed and by how much.  The exported
files are recorded in the study's lineage tables (``autotl lineage FILE``).

:func:`load_predictor` loads any of these (or a run folder) for ``autotl predict``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from autotl.errors import AutotlError, UsageError

__all__ = [
    "FORMATS", "QUANTIZATIONS", "FLOAT_TOLERANCE", "INT8_MIN_AGREEMENT",
    "ExportParityError", "ExportResult", "export", "check_parity", "verify_export",
    "load_predictor", "wilson_interval", "add_export_parser", "cmd_export",
]

FORMATS = ("keras", "savedmodel", "tflite")
QUANTIZATIONS = ("int8",)
FLOAT_TOLERANCE = 1e-4  # max |probability difference| allowed for float formats
INT8_MIN_AGREEMENT = 0.98  # min share of images on which the int8 model's top-1 class is the Keras model's
REPRESENTATIVE_IMAGES = 100  # training images that calibrate the int8 model
PARITY_IMAGES = 256  # at most this many validation images are compared (evenly spaced)
REPRODUCE_LOSS_ATOL, REPRODUCE_LOSS_RTOL = 1e-4, 1e-3  # the model's val loss vs the search's record (float32 noise is ~1e-7)

KERAS_FILE = "model.keras"
SAVEDMODEL_DIR = "savedmodel"
TFLITE_FILE = "model.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
LABELS_FILE = "labels.txt"
CARD_FILE = "MODEL_CARD.md"
PARITY_FILE = "parity.json"
OWNED = (KERAS_FILE, SAVEDMODEL_DIR, TFLITE_FILE, TFLITE_INT8_FILE, LABELS_FILE, CARD_FILE, PARITY_FILE)

Predict = Callable[[Sequence[np.ndarray]], np.ndarray]


class ExportParityError(AutotlError):
    """An exported format does not predict what the Keras model predicts; the message names it and the numbers."""


@dataclass
class ExportResult:
    out_dir: Path
    trial: int
    class_names: list[str]
    files: dict[str, Path]  # "keras", "savedmodel", "tflite", "tflite_int8", "labels", "model_card", "parity"
    parity: dict[str, Any]
    input_size: tuple[int, int]
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- small helpers


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))  # round-off at p = 0 or 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _quiet() -> None:
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", module="keras")
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _resize(images: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """float32 ``(n, h, w, 3)``: each image resized as ``keras.layers.Resizing(h, w)`` does (and ``ImageSet.batches``)."""
    import keras

    out = []
    for im in images:
        x = keras.ops.image.resize(np.asarray(im, dtype=np.float32)[None], size, interpolation="bilinear", data_format="channels_last")
        out.append(keras.ops.convert_to_numpy(x))
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, *size, 3), np.float32)


def _by_shape(images: Sequence[np.ndarray], run: Callable[[np.ndarray], np.ndarray], n_out: int) -> np.ndarray:
    """``run`` on batches of equal-size images (the model's Resizing needs one size per batch), in input order."""
    out = np.zeros((len(images), n_out), dtype=np.float32)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(np.shape(im)), []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), 32):
            chunk = idx[start : start + 32]
            out[chunk] = run(np.stack([np.asarray(images[i]) for i in chunk]))
    return out


def _input_size(model: Any) -> tuple[int, int]:
    """The backbone's input size, read from the model's ``resize`` layer."""
    try:
        cfg = model.get_layer("resize").get_config()
        return int(cfg["height"]), int(cfg["width"])
    except Exception:
        raise UsageError(f"model {getattr(model, 'name', '?')} has no 'resize' layer; only models built by autotl (autotl.model.assemble) can be exported") from None


def _read_labels(path: Path) -> list[str]:
    names = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n]


# --------------------------------------------------------------------------- predictors (also what `autotl predict` uses)


def _keras_predictor(model: Any) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    import keras

    n = int(model.output_shape[-1])
    return lambda images: _by_shape(images, lambda x: keras.ops.convert_to_numpy(model(x.astype(np.float32), training=False)), n)


def _savedmodel_predictor(path: Path) -> tuple[Predict, Predict]:
    """(uint8 images -> probabilities via ``serving_default``, the same via ``serving_bytes`` on PNG-encoded images)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    default, raw = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]
    n = int(default.structured_outputs["probabilities"].shape[-1])

    def by_pixels(images: Sequence[np.ndarray]) -> np.ndarray:
        return _by_shape(images, lambda x: default(images=tf.constant(x.astype(np.uint8)))["probabilities"].numpy(), n)

    def by_bytes(images: Sequence[np.ndarray]) -> np.ndarray:
        out = [raw(image_bytes=tf.constant([_png(im) for im in images[s : s + 32]]))["probabilities"].numpy() for s in range(0, len(images), 32)]
        return np.concatenate(out) if out else np.zeros((0, n), np.float32)

    by_pixels.loaded = loaded  # type: ignore[attr-defined]  # keep the SavedModel alive
    return by_pixels, by_bytes


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _interpreter(model_path: Path) -> Any:
    _quiet()
    try:  # LiteRT, the successor of tf.lite.Interpreter, when installed
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with _stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_path=str(model_path))
        interpreter.allocate_tensors()
    return interpreter


def _tflite_predictor(path: Path) -> tuple[Predict, dict[str, Any]]:
    """Images -> probabilities through a ``.tflite`` file: resize, quantize if it takes integers, invoke, dequantize."""
    it = _interpreter(path)
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    _, h, w, _ = (int(v) for v in inp["shape"])
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = outp["quantization"]
    info = {"input_dtype": np.dtype(inp["dtype"]).name, "input_shape": [1, h, w, 3], "input_quantization": [float(in_scale), int(in_zero)],
            "output_dtype": np.dtype(outp["dtype"]).name, "output_quantization": [float(out_scale), int(out_zero)]}

    def predict(images: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for x in _resize(images, (h, w)):
            if np.issubdtype(inp["dtype"], np.integer):
                lo, hi = np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max
                x = np.clip(np.round(x / (in_scale or 1.0) + in_zero), lo, hi)
            it.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
            it.invoke()
            y = it.get_tensor(outp["index"])[0]
            out.append((y.astype(np.float32) - out_zero) * out_scale if np.issubdtype(outp["dtype"], np.integer) else y.astype(np.float32))
        return np.stack(out) if out else np.zeros((0, int(outp["shape"][-1])), np.float32)

    return predict, info


def load_predictor(path: str | os.PathLike) -> tuple[Predict, list[str]]:
    """``(predict, class_names)`` for any model autotl writes; ``predict(list of uint8 HxWx3 arrays)`` gives float32 ``[n, classes]``.

    ``path`` may be a run folder (its ``best_model.keras``), an export folder (its
    ``model.keras``), a ``.keras`` file, a SavedModel folder or a ``.tflite`` file.
    Class names come from ``classes.json`` or ``labels.txt`` beside the model (for a
    SavedModel also its ``assets/labels.txt``).
    """
    _quiet()
    p = Path(path)
    if p.is_dir():
        if (p / "saved_model.pb").is_file():
            labels = next((f for f in (p / "assets" / LABELS_FILE, p.parent / LABELS_FILE) if f.is_file()), None)
            if labels is None:
                raise UsageError(f"SavedModel {p} has no assets/{LABELS_FILE} (and none beside it); export it with `autotl export`")
            try:
                predict, _ = _savedmodel_predictor(p)
            except Exception as exc:
                raise UsageError(f"cannot load SavedModel {p} ({_first_line(exc)}); it needs the serving_default and serving_bytes signatures `autotl export` writes") from None
            names = _read_labels(labels)
            return _checked(predict, names, p), names
        for name in ("best_model.keras", KERAS_FILE):
            if (p / name).is_file():
                return load_predictor(p / name)
        if (p / "run.json").is_file() or (p / "study.db").is_file():
            raise UsageError(f"no model at {p / 'best_model.keras'}; pass a run folder whose search finished a trial, or a .keras file")
        raise UsageError(f"{p} holds no model: pass a run folder, an export folder, a .keras file, a SavedModel folder or a .tflite file")
    if not p.is_file():
        raise UsageError(f"no model at {p}; pass a run folder, an export folder, a .keras file, a SavedModel folder or a .tflite file")
    if p.suffix not in (".keras", ".tflite"):
        raise UsageError(f"{p} is not a model autotl can load; pass a run folder, an export folder, a .keras file, a SavedModel folder or a .tflite file")
    names = _names_beside(p)
    if p.suffix == ".keras":
        import keras

        try:
            model = keras.saving.load_model(p, safe_mode=True)
        except Exception as exc:
            raise UsageError(f"cannot load {p} ({_first_line(exc)}); pass a .keras file written by autotl") from None
        predict = _keras_predictor(model)
        predict.model = model  # type: ignore[attr-defined]
    else:
        try:
            predict, _ = _tflite_predictor(p)
        except Exception as exc:
            raise UsageError(f"cannot load {p} ({_first_line(exc)}); pass a .tflite file written by `autotl export`") from None
    return _checked(predict, names, p), names


def _checked(predict: Predict, names: list[str], where: Path) -> Predict:
    """``predict``, refusing outputs whose width is not the number of class names found beside the model."""
    def run(images: Sequence[np.ndarray]) -> np.ndarray:
        probs = predict(images)
        if probs.ndim != 2 or probs.shape[1] != len(names):
            raise UsageError(f"{where} predicts {probs.shape[-1]} classes but {len(names)} class names were found beside it; "
                             "keep the model with the labels.txt/classes.json it was exported with")
        return probs

    run.__dict__.update(predict.__dict__)  # .model, .loaded: keep what the predictor holds on to
    return run


def _names_beside(model_file: Path) -> list[str]:
    folder = model_file.parent
    if (folder / "classes.json").is_file():
        return [str(c) for c in json.loads((folder / "classes.json").read_text())]
    if (folder / LABELS_FILE).is_file():
        return _read_labels(folder / LABELS_FILE)
    raise UsageError(f"no classes.json or {LABELS_FILE} beside {model_file}; it names the classes the model predicts")


# --------------------------------------------------------------------------- parity


def check_parity(fmt: str, reference: np.ndarray, candidate: np.ndarray, quantized: bool = False,
                 labels: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Compare one format's probabilities with the Keras model's; raise ExportParityError outside the tolerance.

    Float formats must agree within ``FLOAT_TOLERANCE`` in every probability; a
    quantized format must give the same top-1 class on ``INT8_MIN_AGREEMENT`` of
    the images (its max difference is reported, not bounded).  NaN never passes.
    """
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    n = len(reference)
    if candidate.shape != reference.shape or n == 0:
        raise ExportParityError(f"{fmt} parity failed: output shape {candidate.shape} vs the Keras model's {reference.shape}")
    finite = bool(np.isfinite(candidate).all())
    diff = float(np.abs(candidate - reference).max()) if finite else float("nan")
    agree = int((candidate.argmax(1) == reference.argmax(1)).sum()) if finite else 0
    record: dict[str, Any] = {"images": n, "top1_agreement": agree / n, "top1_agreeing": agree, "max_abs_diff": diff if finite else None,
                              "quantized": quantized}
    if labels is not None and finite:
        record["accuracy"] = float((candidate.argmax(1) == np.asarray(labels)).mean())
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
        raise _Failed(record, f"{fmt} parity failed on {n} validation images: top-1 agreement {agree}/{n} ({agree / n:.1%}), "
                              f"max |dp| {shown} ({need})")
    return record


class _Failed(ExportParityError):
    def __init__(self, record: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.record = record


def verify_export(out_dir: str | os.PathLike, reference: Any, images: Sequence[np.ndarray],
                  labels: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Load every exported file in ``out_dir`` back from disk and compare it with ``reference`` (a Keras model) on ``images``.

    Returns the parity record (what ``parity.json`` holds).  The first format
    outside its tolerance raises ExportParityError; the record so far, with the
    failure, is on the exception as ``.parity``.
    """
    import keras

    out = Path(out_dir)
    ref = _keras_predictor(reference)(images)
    record: dict[str, Any] = {"images": len(images), "tolerances": {"float_max_abs_diff": FLOAT_TOLERANCE, "int8_min_top1_agreement": INT8_MIN_AGREEMENT},
                              "formats": {}, "passed": False}
    if labels is not None:
        record["reference_accuracy"] = float((ref.argmax(1) == np.asarray(labels)).mean())

    def check(fmt: str, run: Callable[[], tuple[np.ndarray, dict[str, Any]]], quantized: bool = False) -> None:
        try:
            got, extra = run()
        except Exception as exc:  # a format that cannot even load or run is a parity failure too
            record["formats"][fmt] = {"passed": False, "error": _first_line(exc)}
            raise _parity_error(f"{fmt} parity failed: running it raised {type(exc).__name__}: {_first_line(exc)}", record) from None
        try:
            record["formats"][fmt] = {**check_parity(fmt, ref, got, quantized, labels), **extra}
        except _Failed as exc:
            record["formats"][fmt] = {**exc.record, **extra}
            raise _parity_error(str(exc), record) from None

    def tflite(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        predict, info = _tflite_predictor(path)
        return predict(images), info

    if (out / KERAS_FILE).is_file():
        check("keras", lambda: (_keras_predictor(keras.saving.load_model(out / KERAS_FILE, safe_mode=True))(images), {}))
    if (out / SAVEDMODEL_DIR).is_dir():
        loaded: list[Any] = []

        def signatures() -> list[Any]:  # loaded once, inside the first check (a load error is a parity failure)
            if not loaded:
                loaded.extend(_savedmodel_predictor(out / SAVEDMODEL_DIR))
            return loaded

        check("savedmodel:serving_default", lambda: (signatures()[0](images), {}))
        check("savedmodel:serving_bytes", lambda: (signatures()[1](images), {}))
    for fmt, name, quantized in (("tflite", TFLITE_FILE, False), ("tflite_int8", TFLITE_INT8_FILE, True)):
        if (out / name).is_file():
            check(fmt, lambda path=out / name: tflite(path), quantized)
    record["passed"] = True
    return record


def _parity_error(message: str, record: dict[str, Any]) -> ExportParityError:
    err = ExportParityError(message)
    err.parity = record  # type: ignore[attr-defined]
    return err


# --------------------------------------------------------------------------- the run folder


@dataclass
class _Run:
    run_dir: Path
    storage_url: str
    study: Any
    trial: Any
    model_file: Path
    class_names: list[str]
    record: dict[str, Any]  # run.json
    space: dict[str, Any]
    data_summary: dict[str, Any]


def _weights_source(record: dict[str, Any], weights: Any) -> Any:
    """What the search's backbones were built from: ``weights`` if given, else what run.json records."""
    from autotl.weights import WeightsSource

    if weights is not None:
        return weights
    recorded = str(record.get("weights") or "")
    if recorded in ("none", "imagenet"):
        return WeightsSource(recorded)
    if recorded:
        return WeightsSource.parse(weights_dir=recorded)  # a folder that is gone is a one-line UsageError
    raise UsageError("the run folder does not record where the backbone weights came from; pass --weights-dir DIR or --weights none|imagenet")


def _model_file(run_dir: Path, study: Any, chosen: Any, complete: list[Any], plugins: Sequence[str], registry: Any,
                weights: Any, record: dict[str, Any], say: Callable[[str], None]) -> Path:
    """The chosen trial's ``.keras`` file: already there, the best model's copy, or assembled from its stored layers."""
    from autotl.search import BEST_MARKER, BEST_MODEL, MODEL_FILE, WEIGHTS_FILE, trial_model
    from autotl.weights import resolve_weights

    folder = run_dir / "trials" / f"{chosen.number:04d}"
    for path in (run_dir / str(chosen.user_attrs.get("model_path", "-")), folder / MODEL_FILE):
        if path.is_file():
            return path
    marker = run_dir / BEST_MARKER
    if (run_dir / BEST_MODEL).is_file() and marker.is_file() and json.loads(marker.read_text()).get("trial") == chosen.number:
        return run_dir / BEST_MODEL
    stored = run_dir / str(chosen.user_attrs.get("weights_path", f"trials/{chosen.number:04d}/{WEIGHTS_FILE}"))
    if not stored.is_file():
        kept = [t.number for t in complete if (run_dir / "trials" / f"{t.number:04d}").is_dir()]
        raise UsageError(f"trial {chosen.number} has no saved model (only the --keep-models best trials keep theirs); "
                         f"trials with a model: {', '.join(map(str, kept)) or 'none'} (or omit --trial for the best)")
    if registry is None:
        from autotl.registry import get_registry

        registry = get_registry(plugins)
    name = chosen.params["backbone"]
    if name not in registry.backbones:
        raise UsageError(f"trial {chosen.number} used backbone {name!r} from plugin {chosen.user_attrs.get('plugin', '?')!r}, "
                         "which is not installed here; install it or pass --plugin MODULE")
    source = _weights_source(record, weights)
    resolved = resolve_weights(registry.backbone(name), source)
    trained_on = chosen.user_attrs.get("weights_sha256")
    if trained_on and resolved.sha256 and trained_on != resolved.sha256:
        raise UsageError(f"trial {chosen.number} was trained on {name} weights with SHA-256 {trained_on[:12]}..., but {resolved.origin} "
                         f"has {resolved.sha256[:12]}...; pass the --weights-dir the search used")
    say(f"assembling trial {chosen.number}'s model from its stored layers")
    return trial_model(run_dir, study, chosen.number, registry, source)


def _open_run(run_dir: Path, trial: Optional[int], storage_url: Optional[str], study_name: str, plugins: Sequence[str] = (),
              registry: Any = None, weights: Any = None, say: Callable[[str], None] = lambda _m: None) -> _Run:
    import optuna

    from autotl.search import CLASSES_FILE, STUDY_DB, open_study

    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise UsageError(f"run folder {run_dir} {what}; pass the --out folder of `autotl search`")
    if storage_url is None and not (run_dir / STUDY_DB).is_file():
        raise UsageError(f"run folder {run_dir} has no {STUDY_DB}; pass --storage URL if its search used another storage")
    url = storage_url or f"sqlite:///{(run_dir / STUDY_DB).resolve()}"
    study = open_study(url, study_name, create=False)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if trial is None:
        if not complete:
            raise UsageError(f"the study in {run_dir} has no complete trial yet; finish a search first")
        from autotl.search import best_trial

        chosen = best_trial(study)  # the trial best_model.keras holds
    else:
        found = [t for t in trials if t.number == trial]
        if not found:
            raise UsageError(f"no trial {trial} in the study ({len(trials)} trials, numbered 0..{len(trials) - 1}); pass one of them to --trial")
        chosen = found[0]
        if chosen.number not in {t.number for t in complete}:
            raise UsageError(f"trial {trial} is {chosen.state.name.lower()}, not complete; complete trials: {', '.join(str(t.number) for t in complete) or 'none'}")
    record: dict[str, Any] = {}
    if (run_dir / "run.json").is_file():
        record = json.loads((run_dir / "run.json").read_text())
    names = study.user_attrs.get("class_names") or record.get("class_names")
    if not names and (run_dir / CLASSES_FILE).is_file():
        names = json.loads((run_dir / CLASSES_FILE).read_text())
    if not names:
        raise UsageError(f"cannot find the class names of {run_dir} (no classes.json, run.json or study attribute)")
    model_file = _model_file(run_dir, study, chosen, complete, plugins, registry, weights, record, say)
    return _Run(run_dir, url, study, chosen, model_file, [str(c) for c in names], record,
                study.user_attrs.get("space") or record.get("space") or {}, study.user_attrs.get("data") or {})


def _split_settings(run: _Run) -> tuple[float, int]:
    """The val_fraction and seed the search split its data with: the recorded split first, then the space's."""
    split = str(run.data_summary.get("split", ""))
    m = re.search(r"val_fraction=([0-9.eE+-]+), seed=(-?\d+)", split)
    if m:
        return float(m.group(1)), int(m.group(2))
    return float(run.space.get("val_fraction", 0.2)), int(run.space.get("seed", 0))


def _dataset(run: _Run, data: Optional[str], plugins: Sequence[str], notes: list[str]) -> Any:
    """The search's data set again (its validation split checks parity, its training split calibrates int8)."""
    from autotl import data as autotl_data

    val_fraction, seed = _split_settings(run)
    source = data or run.record.get("source") or run.data_summary.get("source")
    if not source:
        raise UsageError(f"{run.run_dir} does not record where its data came from; pass --data DATA_DIR (parity is checked on its validation images)")
    if source.startswith("sample:") and not data:
        from autotl.registry import get_registry

        images, labels, names = get_registry(plugins).sample(source.split(":", 1)[1]).load()
        ds = autotl_data.from_arrays(images, labels, names, source, val_fraction, seed)
    else:
        if not Path(source).is_dir():
            raise UsageError(f"the search's data folder {source} is gone; parity is checked on its validation images: pass --data DATA_DIR")
        ds = autotl_data.load_folder(source, val_fraction, seed)
    if list(ds.class_names) != run.class_names:
        raise UsageError(f"data at {source} has classes {list(ds.class_names)} but the model predicts {run.class_names}; pass the search's data with --data")
    expected = run.record.get("data_fingerprint") or run.data_summary.get("fingerprint")
    if expected and ds.fingerprint != expected:
        notes.append(f"data at {source} does not match the search's (fingerprint differs: files changed, or the search split them "
                     f"otherwise than val_fraction={val_fraction:g}, seed={seed}); parity holds regardless, but the accuracy "
                     "re-measured here is not on the search's validation split")
    return ds


def _evenly(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


# --------------------------------------------------------------------------- the exporters


def _tf_variables(model: Any) -> list[Any]:
    """The model's ``tf.Variable`` objects, for a ``tf.Module`` to track explicitly (as ``keras.export.ExportArchive`` does).

    A Keras 3 model held as a module attribute is not enough for the TFLite
    converter: it then keeps the weights as uninitialised resource variables
    (VAR_HANDLE/READ_VARIABLE ops) and the .tflite file outputs NaN.
    """
    return [getattr(v, "value", v) for v in model.variables]


def _savedmodel(model: Any, class_names: list[str], size: tuple[int, int], folder: Path, labels_file: Path) -> None:
    import tensorflow as tf

    h, w = size
    png_magic = b"\x89PNG\r\n\x1a\n"

    class Serving(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="autotl_serving")
            self.model = model
            self.model_variables = _tf_variables(model)
            self.labels = tf.saved_model.Asset(str(labels_file))  # assets/labels.txt

        def _outputs(self, pixels: Any) -> dict[str, Any]:
            probs = self.model(pixels, training=False)
            names = tf.constant(class_names)
            return {"probabilities": probs, "classes": tf.gather(names, tf.argmax(probs, axis=-1))}

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serve(self, images: Any) -> dict[str, Any]:
            return self._outputs(tf.cast(images, tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(self, image_bytes: Any) -> dict[str, Any]:
            def decode(data: Any) -> Any:
                def png() -> Any:  # transparency on white, as autotl.data.decode_image does
                    rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32)
                    alpha = rgba[..., 3:]
                    return tf.cast(tf.round((rgba[..., :3] * alpha + 255.0 * (255.0 - alpha)) / 255.0), tf.uint8)

                def jpeg() -> Any:  # TF's default DCT (INTEGER_FAST) differs from Pillow's by up to ~7 levels
                    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

                def other() -> Any:  # GIF (first frame), BMP
                    return tf.io.decode_image(data, channels=3, expand_animations=False)

                is_png = tf.equal(tf.strings.substr(data, 0, 8), png_magic)
                is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
                pixels = tf.cond(is_png, png, lambda: tf.cond(is_jpeg, jpeg, other))
                pixels = tf.ensure_shape(pixels, [None, None, 3])
                # the bilinear resize the model's Resizing layer applies; resizing again to the same size is the identity
                return tf.image.resize(tf.cast(pixels, tf.float32), (h, w), method="bilinear")

            pixels = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([h, w, 3], tf.float32))
            return self._outputs(pixels)

    module = Serving()
    tf.saved_model.save(module, str(folder), signatures={
        "serving_default": module.serve.get_concrete_function(),
        "serving_bytes": module.serve_bytes.get_concrete_function(),
    })


def _tflite(model: Any, size: tuple[int, int], representative: Optional[np.ndarray] = None) -> bytes:
    """Float TFLite (or full-integer with uint8 in/out when ``representative`` images are given), input ``[1, h, w, 3]``."""
    import tensorflow as tf

    h, w = size

    class Fixed(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="autotl_tflite")
            self.model = model
            self.model_variables = _tf_variables(model)

        @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32, name="image")])
        def serve(self, image: Any) -> Any:
            return self.model(image, training=False)

    module = Fixed()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if representative is not None:
        def calibration() -> Any:
            for x in representative:
                yield [x[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with warnings.catch_warnings(), _stderr_silenced():  # the converter's C++ notes ("fully_quantize: 0, ...")
        warnings.simplefilter("ignore")
        return converter.convert()


@contextlib.contextmanager
def _stderr_silenced() -> Any:
    """Close file descriptor 2 for a block (TensorFlow's C++ logging ignores Python); errors still raise."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# --------------------------------------------------------------------------- export


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    items = [f for f in items if f]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise UsageError(f"unknown export format {unknown[0]!r}; choose from {', '.join(FORMATS)} (comma-separated)" if unknown
                         else f"no export format given; choose from {', '.join(FORMATS)} (comma-separated)")
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
    dataset = _dataset(run, data, plugins, notes)
    expected = run.record.get("data_fingerprint") or run.data_summary.get("fingerprint")
    same_data = bool(expected) and expected == dataset.fingerprint

    import keras

    say(f"loading trial {run.trial.number}: {run.model_file}")
    model = keras.saving.load_model(run.model_file, safe_mode=True)
    size = _input_size(model)
    if int(model.output_shape[-1]) != len(run.class_names):
        raise UsageError(f"{run.model_file} predicts {model.output_shape[-1]} classes but the run names {len(run.class_names)}; the run folder is inconsistent")
    say(f"checking the model reproduces trial {run.trial.number}'s validation score")
    reproduced = _check_reproduces(model, run, dataset, size, same_data)
    picked = _evenly(len(dataset.val), PARITY_IMAGES)
    images = [dataset.val.load(i) for i in picked]
    labels = dataset.val.labels[picked]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    seconds: dict[str, float] = {}
    try:
        (staging / LABELS_FILE).write_text("".join(f"{c}\n" for c in run.class_names), encoding="utf-8")
        if "keras" in formats:
            shutil.copyfile(run.model_file, staging / KERAS_FILE)
        if "savedmodel" in formats:
            say("writing the SavedModel")
            start = time.perf_counter()
            _savedmodel(model, run.class_names, size, staging / SAVEDMODEL_DIR, staging / LABELS_FILE)
            seconds["savedmodel"] = time.perf_counter() - start
        if "tflite" in formats:
            say("converting to TFLite")
            start = time.perf_counter()
            (staging / TFLITE_FILE).write_bytes(_tflite(model, size))
            seconds["tflite"] = time.perf_counter() - start
            if quantize == "int8":
                chosen = _evenly(len(dataset.train), REPRESENTATIVE_IMAGES)
                say(f"quantizing to int8 on {len(chosen)} training images")
                start = time.perf_counter()
                representative = _resize([dataset.train.load(i) for i in chosen], size)  # what the model's Resizing feeds on
                (staging / TFLITE_INT8_FILE).write_bytes(_tflite(model, size, representative))
                seconds["tflite_int8"] = time.perf_counter() - start
        say(f"checking parity on {len(images)} validation images")
        try:
            parity = verify_export(staging, model, images, labels)
        except ExportParityError as exc:
            parity = {**getattr(exc, "parity", {}), "search_score": reproduced, "seconds": seconds, "error": str(exc)}
            _write_parity(staging, parity, run, dataset, len(dataset.val))
            failed = out_dir.parent / f"{out_dir.name}.unverified"
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(staging, failed)
            raise _parity_error(f"{exc}; nothing written to {out_dir}, the unverified files are in {failed}", parity) from None
        parity = _write_parity(staging, {**parity, "search_score": reproduced, "seconds": seconds}, run, dataset, len(dataset.val))
        _write_card(staging, run, dataset, parity, size, formats, quantize, notes)
        _install(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _record_lineage(run, out_dir, dataset, notes)
    files = {key: out_dir / name for key, name in (("keras", KERAS_FILE), ("savedmodel", SAVEDMODEL_DIR), ("tflite", TFLITE_FILE),
             ("tflite_int8", TFLITE_INT8_FILE), ("labels", LABELS_FILE), ("model_card", CARD_FILE), ("parity", PARITY_FILE))
             if (out_dir / name).exists()}
    return ExportResult(out_dir, run.trial.number, run.class_names, files, parity, size, notes)


def _check_reproduces(model: Any, run: _Run, dataset: Any, size: tuple[int, int], same_data: bool) -> dict[str, Any]:
    """The model's accuracy and loss on the whole validation split must be the ones the search recorded for the trial.

    Parity only shows the formats agree with the Keras model; this shows the Keras
    model is the one the search scored (a model assembled from stored layers on
    the wrong backbone weights would pass parity and still be wrong).
    """
    recorded_acc, recorded_loss = float(run.trial.value), run.trial.user_attrs.get("val_loss")
    if not same_data:
        return {"skipped": "the data re-read now is not the search's validation split (fingerprint differs)"}
    probs = np.concatenate([np.asarray(model.predict_on_batch(b), dtype=np.float64) for b in dataset.val.batches(size, 32)])
    y = np.asarray(dataset.val.labels)
    n = len(y)
    acc = float((probs.argmax(1) == y).mean())
    loss = float(-np.log(np.clip(probs[np.arange(n), y], 1e-7, 1.0)).mean())
    record = {"images": n, "accuracy": acc, "recorded_accuracy": recorded_acc, "val_loss": loss, "recorded_val_loss": recorded_loss}
    off_by = abs(round(acc * n) - round(recorded_acc * n))
    loss_ok = recorded_loss is None or abs(loss - float(recorded_loss)) <= REPRODUCE_LOSS_ATOL + REPRODUCE_LOSS_RTOL * abs(float(recorded_loss))
    record["passed"] = bool(off_by <= 1 and loss_ok)  # one borderline image may flip between the cached-feature and full paths
    if not record["passed"]:
        raise _parity_error(
            f"trial {run.trial.number}'s model ({run.model_file.name}) scores accuracy {acc:.4f}, loss {loss:.4f} on the {n} validation images, "
            f"but the search recorded {recorded_acc:.4f}, {float(recorded_loss or float('nan')):.4f}: it is not the model the search scored "
            "(other backbone weights or plugin version?); nothing was exported", {"search_score": record, "passed": False})
    return record


def _record_lineage(run: _Run, out_dir: Path, dataset: Any, notes: list[str]) -> None:
    """Record the exported files in the study's lineage tables (``autotl lineage FILE`` finds them); never fails the export."""
    try:
        from autotl.lineage import record_model

        summary = run.data_summary or {"source": dataset.source, "fingerprint": dataset.fingerprint}
        for name in (KERAS_FILE, f"{SAVEDMODEL_DIR}/saved_model.pb", TFLITE_FILE, TFLITE_INT8_FILE):
            if (out_dir / name).is_file():
                record_model(run.storage_url, run.study.study_name, run.trial, out_dir / name, "export", data=summary)
    except Exception as exc:  # noqa: BLE001 -- the verified files are in place; say why lineage is missing
        notes.append(f"lineage not recorded ({_first_line(exc)})")


def _write_parity(folder: Path, parity: dict[str, Any], run: _Run, dataset: Any, n_val: int) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from autotl import __version__

    parity = {**parity, "trial": run.trial.number, "model": str(run.model_file.relative_to(run.run_dir)),
              "versions": {"autotl": __version__, "tensorflow": tf.__version__, "keras": keras.__version__},
              "data": {"source": dataset.source, "split": dataset.split, "validation_images": n_val, "compared": parity.get("images")}}
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


# --------------------------------------------------------------------------- the model card


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _write_card(folder: Path, run: _Run, dataset: Any, parity: dict[str, Any], size: tuple[int, int],
                formats: Sequence[str], quantize: Optional[str], notes: list[str]) -> None:
    t, a = run.trial, run.trial.user_attrs
    names = run.class_names
    summary = run.data_summary
    expected = run.record.get("data_fingerprint") or summary.get("fingerprint")
    same_data = expected is None or expected == dataset.fingerprint
    if isinstance(summary.get("counts"), dict) and summary["counts"].get("val"):  # what the search itself recorded
        counts = {part: [int(summary["counts"][part].get(c, 0)) for c in names] for part in ("train", "val")}
        split, fingerprint, source = summary.get("split", "?"), summary.get("fingerprint", "?"), summary.get("source", dataset.source)
    elif same_data:
        counts = {"train": dataset.train.counts(len(names)), "val": dataset.val.counts(len(names))}
        split, fingerprint, source = dataset.split, dataset.fingerprint, dataset.source
    else:
        counts, split, fingerprint, source = {}, "not recorded", expected, run.record.get("source", "?")
    n_train = sum(counts.get("train", [])) if counts else None
    n_val = sum(counts.get("val", [])) if counts else None
    val_acc = float(t.value)
    if n_val:
        k = round(val_acc * n_val)
        lo, hi = wilson_interval(k, n_val)
        recorded = f"**{_pct(val_acc)}** ({k}/{n_val}); 95% Wilson interval **{_pct(lo)} - {_pct(hi)}**"
    else:
        recorded = f"**{_pct(val_acc)}** (validation set size not recorded, so no interval)"
    measured = parity.get("reference_accuracy")
    n_cmp = parity.get("images") or 0
    hist = a.get("history") or {}
    p1 = len((hist.get("phase1") or {}).get("val_loss", []))
    p2 = len((hist.get("phase2") or {}).get("val_loss", []))
    stable = a.get("head_stable_epoch")
    space = run.space
    lines = [
        f"# Model card: {len(names)}-class image classifier (autotl trial {t.number})",
        "",
        f"Exported by autotl on {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from run folder `{run.run_dir}` (study `{run.study.study_name}`), "
        f"with " + ", ".join(f"{k} {v}" for k, v in parity.get("versions", {}).items()) + ".",
        "",
        "## Data",
        "",
        f"- Source: `{source}`; split: {split}; fingerprint `{fingerprint}`.",
        *([f"- {n_train} training and {n_val} validation images.", "", "| class | train | val |", "|---|---:|---:|",
           *[f"| {c} | {counts['train'][i]} | {counts['val'][i]} |" for i, c in enumerate(names)]] if counts
          else ["- The search's split is not recorded and the data re-read now does not match it; image counts unknown."]),
        "",
        f"Classes, in output order (also `labels.txt`): {', '.join(f'`{c}`' for c in names)}.",
        "",
        "## Metrics",
        "",
        f"- Validation accuracy recorded by the search: {recorded}.",
        f"- Validation loss: {a.get('val_loss', float('nan')):.4f}.",
    ]
    if measured is not None:
        mk = round(measured * n_cmp)
        mlo, mhi = wilson_interval(mk, n_cmp)
        lines.append(f"- Accuracy of the exported Keras model re-measured on {n_cmp} {'validation' if same_data else 'held-out (data not matching the search, see Warnings)'} images at export: "
                     f"{_pct(measured)} ({mk}/{n_cmp}; 95% Wilson interval {_pct(mlo)} - {_pct(mhi)}).")
    score = parity.get("search_score") or {}
    if score.get("passed"):
        lines.append(f"- Checked at export: the exported model reproduces the search's score on all {score['images']} validation images "
                     f"(accuracy {_pct(score['accuracy'])}, loss {score['val_loss']:.4f}; recorded {_pct(score['recorded_accuracy'])}, "
                     f"{float(score['recorded_val_loss'] or float('nan')):.4f}).")
    elif score.get("skipped"):
        lines.append(f"- Not checked at export that the model reproduces the search's score: {score['skipped']}.")
    lines += [
        "- The validation split also chose the epochs (early stopping) and this trial among the others, so these numbers "
        "are optimistic; measure on a test set the search never saw before relying on them.",
        "",
        "## Model",
        "",
        f"- Backbone: `{t.params.get('backbone')}` (plugin `{a.get('plugin', '?')}`), input resized to {size[0]}x{size[1]} "
        f"with bilinear interpolation; the backbone's preprocessing is inside the model.",
        f"- Backbone weights: {a.get('weights_origin', '?')}; SHA-256 `{a.get('weights_sha256') or 'none (random initialisation, no weight file)'}`.",
        f"- Source model file: `{run.model_file.relative_to(run.run_dir)}`.",
        "",
        "### Hyperparameters",
        "",
        "| name | value |",
        "|---|---|",
        *[f"| {key} | {value:.3g} |" if isinstance(value, float) else f"| {key} | {value} |" for key, value in sorted(t.params.items())],
    ]
    for key, value in (("phase 1 learning rate", (space.get("phase1") or {}).get("learning_rate")),
                       ("batch size", space.get("batch_size")), ("seed", space.get("seed"))):
        if value is not None:
            lines.append(f"| {key} | {value} |")
    lines += [
        "",
        "### Training history",
        "",
        f"- Phase 1 (frozen base, head only): {p1} epochs; head stable at epoch "
        f"{stable + 1 if stable is not None else '- (did not stabilise)'}.",
        f"- Gate to fine-tuning: {a.get('gate', '?')}.",
        f"- Phase 2 (fine-tuning): {p2} epochs" + (f", unfrozen above `{a.get('cut')}` ({a.get('unfrozen_layers')} weight layers)" if p2 else "")
        + (f"; kept: {'yes' if a.get('phase2_kept') else 'no, the phase-1 model was better'}" if p2 else "") + ".",
        "",
        "## Files and parity",
        "",
        f"Every format was loaded back from disk and run on {n_cmp} validation images next to the Keras model "
        f"(float formats: max |probability difference| <= {FLOAT_TOLERANCE:g}; int8: same top-1 class on >= {INT8_MIN_AGREEMENT:.0%} of images).",
        "",
        "| format | file | top-1 agreement | max abs prob. diff | accuracy |",
        "|---|---|---:|---:|---:|",
    ]
    where = {"keras": KERAS_FILE, "savedmodel:serving_default": f"{SAVEDMODEL_DIR}/", "savedmodel:serving_bytes": f"{SAVEDMODEL_DIR}/",
             "tflite": TFLITE_FILE, "tflite_int8": TFLITE_INT8_FILE}
    for fmt, r in parity.get("formats", {}).items():
        diff = r.get("max_abs_diff")
        acc = r.get("accuracy")
        lines.append(f"| {fmt} | `{where.get(fmt, '')}` | {_pct(r['top1_agreement'])} | {diff:.2e} | {_pct(acc) if acc is not None else '-'} |")
    lines += ["", "SHA-256 of the files (of a folder: over its files' relative paths and bytes, in sorted order):", ""]
    for name in OWNED:
        path = folder / name
        if path.exists() and name not in (CARD_FILE,):
            lines.append(f"- `{name}{'/' if path.is_dir() else ''}`: `{_sha256(path)}` ({_size(path)} bytes)")
    lines += [
        "",
        "## How to call it",
        "",
        "- `model.keras`: `keras.saving.load_model(path, safe_mode=True)`; input float32 or uint8 RGB pixels 0..255, "
        "`[batch, height, width, 3]`, any size (one size per batch); output softmax probabilities.",
        "- `savedmodel/`: signature `serving_default` takes `images` uint8 `[batch, height, width, 3]`; signature `serving_bytes` "
        "takes `image_bytes` string `[batch]` (encoded JPEG/PNG/GIF/BMP). Both return `probabilities` float32 `[batch, classes]` "
        "and `classes` string `[batch]`. Class names are also in `savedmodel/assets/labels.txt`.",
        f"- `model.tflite`: one float32 image `[1, {size[0]}, {size[1]}, 3]`, pixels 0..255 already resized to {size[0]}x{size[1]} "
        "with bilinear interpolation (no antialiasing, half-pixel centres: `tf.image.resize`).",
    ]
    if quantize == "int8":
        info = parity.get("formats", {}).get("tflite_int8", {})
        scale, zero = info.get("input_quantization", [1.0, 0])
        lines.append(f"- `model_int8.tflite`: one uint8 image `[1, {size[0]}, {size[1]}, 3]` resized the same way "
                     f"(input quantization scale {scale:g}, zero point {zero}: "
                     + ("the raw pixel values" if (scale, zero) == (1.0, 0) else "quantize pixels as round(p / scale) + zero_point")
                     + "); output uint8, probability = value x " + f"{info.get('output_quantization', [0, 0])[0]:g}.")
    lines += [
        "",
        "## Intended use and limits",
        "",
        f"- Sorting images into exactly these {len(names)} classes, for images like the training data. The model always "
        "answers one of them: it has no 'none of these' class, so out-of-scope images get a confident wrong label. "
        "Use the probabilities with a threshold chosen on your own data when abstaining matters.",
        f"- Images are stretched to {size[0]}x{size[1]} without keeping the aspect ratio, as in training.",
        "- Training decoded files with Pillow: EXIF orientation applied, transparency composited on white, images shrunk "
        "to 1024 px on the longest side first. `serving_bytes` composites PNG transparency the same way but does not apply "
        "EXIF orientation or the 1024 px shrink: send upright images, at most 1024 px (examples/serving/client.py does).",
        "- int8 probabilities are coarse (steps of about 1/256); use the float model when calibrated probabilities matter.",
        f"- Accuracy was measured on {n_val or n_cmp} validation images; the interval above shows how uncertain that is. "
        "It says nothing about data from other cameras, places or times.",
    ]
    if notes:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in notes]]
    (folder / CARD_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- command line


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
