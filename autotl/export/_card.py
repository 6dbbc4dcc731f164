"""MODEL_CARD.md: the data, the metrics with their uncertainty, the model, the files and how to call them, the limits."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.export._common import (
    CARD_FILE,
    FLOAT_TOLERANCE,
    INT8_MIN_AGREEMENT,
    KERAS_FILE,
    OWNED,
    SAVEDMODEL_DIR,
    TFLITE_FILE,
    TFLITE_INT8_FILE,
)
from autotl.objective import trial_metrics
from autotl.stats import wilson_interval
from autotl.weights import sha256_file

if TYPE_CHECKING:
    from autotl.export._run import _Run


def _sha256(path: Path) -> str:
    """SHA-256 of a file's bytes; of a folder, over its files' relative paths and bytes in sorted order."""
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _size(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _test_line(test: dict[str, Any]) -> str:
    """The model card's test-score line: measured once at export on the test split, next to the validation score."""
    if not test.get("images"):
        return f"- Test score: not measured, {test.get('skipped') or 'no test split'}."
    lo, hi = test["ci95"]
    val = test.get("validation_accuracy")
    return (
        f"- **Test accuracy: {_pct(test['accuracy'])}** ({test['correct']}/{test['images']} test images never seen by the "
        f"search; 95% Wilson interval {_pct(lo)} - {_pct(hi)}; {test['split']}), balanced accuracy "
        f"{_pct(test['balanced_accuracy'])}, macro F1 {test['macro_f1']:.4f}, log loss {test['log_loss']:.4f}; "
        f"validation accuracy {_pct(val) if val is not None else '-'}."
        + (f" Note: {test['note']}." if test.get("note") else "")
    )


def _write_card(
    folder: Path,
    run: _Run,
    dataset: Any,
    same_data: bool,
    parity: dict[str, Any],
    size: tuple[int, int],
    formats: Sequence[str],
    quantize: Optional[str],
    notes: list[str],
) -> None:
    """``same_data``: the data re-read now is known to be the search's (``_run._dataset``)."""
    t, a = run.trial, run.trial.user_attrs
    names = run.class_names
    summary = run.data_summary
    expected = run.record.get("data_fingerprint") or summary.get("fingerprint")
    if isinstance(summary.get("counts"), dict) and summary["counts"].get(
        "val"
    ):  # what the search itself recorded
        counts = {
            part: [int(summary["counts"][part].get(c, 0)) for c in names]
            for part in ("train", "val")
        }
        split, fingerprint, source = (
            summary.get("split", "?"),
            summary.get("fingerprint", "?"),
            summary.get("source", dataset.source),
        )
    elif same_data:
        counts = {"train": dataset.train.counts(len(names)), "val": dataset.val.counts(len(names))}
        split, fingerprint, source = dataset.split, dataset.fingerprint, dataset.source
    else:
        counts, split, fingerprint, source = (
            {},
            "not recorded",
            expected or "not recorded",
            run.record.get("source", "?"),
        )
    n_train = sum(counts.get("train", [])) if counts else None
    n_val = sum(counts.get("val", [])) if counts else None
    metrics = trial_metrics(t)
    val_acc = float(metrics["val_accuracy"])
    if n_val:
        k = round(val_acc * n_val)
        lo, hi = wilson_interval(k, n_val)
        recorded = (
            f"**{_pct(val_acc)}** ({k}/{n_val}); 95% Wilson interval **{_pct(lo)} - {_pct(hi)}**"
        )
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
        *(
            [
                f"- {n_train} training and {n_val} validation images.",
                "",
                "| class | train | val |",
                "|---|---:|---:|",
                *[
                    f"| {c} | {counts['train'][i]} | {counts['val'][i]} |"
                    for i, c in enumerate(names)
                ],
            ]
            if counts
            else [
                "- The search's split is not recorded and the data re-read now is not known to match it; image counts unknown."
            ]
        ),
        "",
        f"Classes, in output order (also `labels.txt`): {', '.join(f'`{c}`' for c in names)}.",
        "",
        "## Metrics",
        "",
        f"- Validation accuracy recorded by the search: {recorded}.",
        f"- Validation loss: {metrics.get('val_loss', float('nan')):.4f}.",
    ]
    if measured is not None:
        mk = round(measured * n_cmp)
        mlo, mhi = wilson_interval(mk, n_cmp)
        lines.append(
            f"- Accuracy of the exported Keras model re-measured on {n_cmp} {'validation' if same_data else 'held-out (data not matching the search, see Warnings)'} images at export: "
            f"{_pct(measured)} ({mk}/{n_cmp}; 95% Wilson interval {_pct(mlo)} - {_pct(mhi)})."
        )
    score = parity.get("search_score") or {}
    if score.get("passed"):
        lines.append(
            f"- Checked at export: the exported model reproduces the search's score on all {score['images']} validation images "
            f"(accuracy {_pct(score['accuracy'])}, loss {score['val_loss']:.4f}; recorded {_pct(score['recorded_accuracy'])}, "
            f"{float(score['recorded_val_loss'] or float('nan')):.4f})."
        )
    elif score.get("skipped"):
        lines.append(
            f"- Not checked at export that the model reproduces the search's score: {score['skipped']}."
        )
    lines += [
        _test_line(parity.get("test_score") or {}),
        "- The validation split also chose the epochs (early stopping) and this trial among the others, so the validation "
        "numbers are optimistic; the test score, on images the search never saw, is the one to rely on.",
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
        *[
            f"| {key} | {value:.3g} |" if isinstance(value, float) else f"| {key} | {value} |"
            for key, value in sorted(t.params.items())
        ],
    ]
    for key, value in (
        ("phase 1 learning rate", (space.get("phase1") or {}).get("learning_rate")),
        ("batch size", space.get("batch_size")),
        ("seed", space.get("seed")),
    ):
        if value is not None:
            lines.append(f"| {key} | {value} |")
    lines += [
        "",
        "### Training history",
        "",
        f"- Phase 1 (frozen base, head only): {p1} epochs; head stable at epoch "
        f"{stable + 1 if stable is not None else '- (did not stabilise)'}.",
        f"- Gate to fine-tuning: {a.get('gate_reason') or a.get('gate', '?')}.",
        f"- Phase 2 (fine-tuning): {p2} epochs"
        + (
            f", unfrozen above `{a.get('cut')}` ({a.get('unfrozen_layers')} weight layers)"
            if p2
            else ""
        )
        + (
            f"; kept: {'yes' if a.get('phase2_kept') else 'no, the phase-1 model was better'}"
            if p2
            else ""
        )
        + ".",
        "",
        "## Files and parity",
        "",
        f"Every format was loaded back from disk and run on {n_cmp} validation images next to the Keras model "
        f"(float formats: max |probability difference| <= {FLOAT_TOLERANCE:g}; int8: same top-1 class on >= {INT8_MIN_AGREEMENT:.0%} of images).",
        "",
        "| format | file | top-1 agreement | max abs prob. diff | accuracy |",
        "|---|---|---:|---:|---:|",
    ]
    where = {
        "keras": KERAS_FILE,
        "savedmodel:serving_default": f"{SAVEDMODEL_DIR}/",
        "savedmodel:serving_bytes": f"{SAVEDMODEL_DIR}/",
        "tflite": TFLITE_FILE,
        "tflite_int8": TFLITE_INT8_FILE,
    }
    for fmt, r in parity.get("formats", {}).items():
        diff = r.get("max_abs_diff")
        acc = r.get("accuracy")
        lines.append(
            f"| {fmt} | `{where.get(fmt, '')}` | {_pct(r['top1_agreement'])} | {diff:.2e} | {_pct(acc) if acc is not None else '-'} |"
        )
    lines += [
        "",
        "SHA-256 of the files (of a folder: over its files' relative paths and bytes, in sorted order):",
        "",
    ]
    for name in OWNED:
        path = folder / name
        if path.exists() and name not in (CARD_FILE,):
            lines.append(
                f"- `{name}{'/' if path.is_dir() else ''}`: `{_sha256(path)}` ({_size(path)} bytes)"
            )
    lines += ["", "## How to call it", ""]
    if "keras" in formats:
        lines.append(
            "- `model.keras`: `keras.saving.load_model(path, safe_mode=True)`; input float32 or uint8 RGB pixels 0..255, "
            "`[batch, height, width, 3]`, any size (one size per batch); output softmax probabilities."
        )
    if "savedmodel" in formats:
        lines.append(
            "- `savedmodel/`: signature `serving_default` takes `images` uint8 `[batch, height, width, 3]`; signature `serving_bytes` "
            "takes `image_bytes` string `[batch]` (encoded JPEG/PNG/GIF/BMP). Both return `probabilities` float32 `[batch, classes]` "
            "and `classes` string `[batch]`. Class names are also in `savedmodel/assets/labels.txt`."
        )
    if "tflite" in formats:
        lines.append(
            f"- `model.tflite`: one float32 image `[1, {size[0]}, {size[1]}, 3]`, pixels 0..255 already resized to {size[0]}x{size[1]} "
            "with bilinear interpolation (no antialiasing, half-pixel centres: `tf.image.resize`)."
        )
    if quantize == "int8" and "tflite" in formats:
        info = parity.get("formats", {}).get("tflite_int8", {})
        scale, zero = info.get("input_quantization", [1.0, 0])
        lines.append(
            f"- `model_int8.tflite`: one uint8 image `[1, {size[0]}, {size[1]}, 3]` resized the same way "
            f"(input quantization scale {scale:g}, zero point {zero}: "
            + (
                "the raw pixel values"
                if (scale, zero) == (1.0, 0)
                else "quantize pixels as round(p / scale) + zero_point"
            )
            + "); output uint8, probability = value x "
            + f"{info.get('output_quantization', [0, 0])[0]:g}."
        )
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
