"""MODEL_CARD.md: the data, the metrics with their uncertainty, the model, the files and how to call them, the limits.

Each section is one function of :class:`CardFacts` returning its lines;
:func:`render_card` joins them.  The formats and their usage come from the
format table, the metrics from the study's objectives.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.backbones.weights import sha256_file
from autotl.export._common import CARD_FILE, FLOAT_TOLERANCE, INT8_MIN_AGREEMENT, LABELS_FILE
from autotl.export._format import Format
from autotl.export._table import owned_files
from autotl.scoring.objective import TIE_BREAK, Objectives, trial_metrics
from autotl.scoring.stats import wilson_interval

if TYPE_CHECKING:
    from autotl.data.dataset import Dataset
    from autotl.export._run import _Run

Lines = list[str]


@dataclass(frozen=True)
class CardFacts:
    """Everything the card says, gathered once; ``counts`` is empty when the split is not known."""

    folder: Path  # the staging folder, with every file written
    run: _Run
    parity: dict[str, Any]
    size: tuple[int, int]
    written: tuple[Format, ...]
    notes: Sequence[str]
    same_data: bool  # the data re-read now is known to be the search's (``_run._dataset``)
    counts: dict[str, list[int]]
    split: str
    fingerprint: str
    source: str

    @property
    def n_val(self) -> int | None:
        return sum(self.counts["val"]) if self.counts else None

    @property
    def n_compared(self) -> int:
        return int(self.parity.get("images") or 0)


def card_facts(
    folder: Path,
    run: _Run,
    dataset: Dataset,
    same_data: bool,
    parity: dict[str, Any],
    size: tuple[int, int],
    written: Sequence[Format],
    notes: Sequence[str],
) -> CardFacts:
    """The card's facts; the image counts come from what the search recorded, else from the data when it is the search's."""
    names, summary = run.class_names, run.data_summary
    recorded = summary.get("counts")
    if isinstance(recorded, dict) and recorded.get("val"):
        counts = {p: [int(recorded[p].get(c, 0)) for c in names] for p in ("train", "val")}
        split = str(summary.get("split", "?"))
        fingerprint = str(summary.get("fingerprint", "?"))
        source = str(summary.get("source", dataset.source))
    elif same_data:
        counts = {"train": dataset.train.counts(len(names)), "val": dataset.val.counts(len(names))}
        split, fingerprint, source = dataset.split, dataset.fingerprint, dataset.source
    else:
        expected = run.record.get("data_fingerprint") or summary.get("fingerprint")
        counts, split = {}, "not recorded"
        fingerprint, source = expected or "not recorded", run.record.get("source", "?")
    return CardFacts(
        folder=folder,
        run=run,
        parity=parity,
        size=size,
        written=tuple(written),
        notes=notes,
        same_data=same_data,
        counts=counts,
        split=split,
        fingerprint=fingerprint,
        source=source,
    )


def write_card(facts: CardFacts, sections: Optional[Sequence[Section]] = None) -> Path:
    """``MODEL_CARD.md`` in the export folder, from ``sections`` (default: a single trial's card)."""
    path = facts.folder / CARD_FILE
    path.write_text(render_card(facts, sections or SECTIONS), encoding="utf-8")
    return path


def render_card(c: CardFacts, sections: Sequence[Section]) -> str:
    """The card: its sections in order, each one function; an empty section is left out."""
    parts = [section(c) for section in sections]
    return "\n\n".join("\n".join(part) for part in parts if part) + "\n"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _header(c: CardFacts) -> Lines:
    t, names = c.run.trial, c.run.class_names
    versions = ", ".join(f"{k} {v}" for k, v in c.parity.get("versions", {}).items())
    return [
        f"# Model card: {len(names)}-class image classifier (autotl trial {t.number})",
        "",
        f"Exported by autotl on {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from run folder "
        f"`{c.run.run_dir}` (study `{c.run.study.study_name}`), with {versions}.",
    ]


def _data(c: CardFacts) -> Lines:
    names = c.run.class_names
    lines = [
        "## Data",
        "",
        f"- Source: `{c.source}`; split: {c.split}; fingerprint `{c.fingerprint}`.",
    ]
    if c.counts:
        lines += [
            f"- {sum(c.counts['train'])} training and {c.n_val} validation images.",
            "",
            "| class | train | val |",
            "|---|---:|---:|",
            *[
                f"| {n} | {c.counts['train'][i]} | {c.counts['val'][i]} |"
                for i, n in enumerate(names)
            ],
        ]
    else:
        lines.append(
            "- The search's split is not recorded and the data re-read now is not known to match it; "
            "image counts unknown."
        )
    shown = ", ".join(f"`{n}`" for n in names)
    return [*lines, "", f"Classes, in output order (also `{LABELS_FILE}`): {shown}."]


def _metrics(c: CardFacts) -> Lines:
    """Each of the study's objectives as the search recorded it, then what export measured again."""
    metrics = trial_metrics(c.run.trial)
    objectives = Objectives.of_study(c.run.study)
    lines = ["## Metrics", ""]
    for o in objectives:
        lines.append(
            f"- {o.label[:1].upper()}{o.label[1:]} recorded by the search: {_recorded(c, o, metrics)}."
        )
    if TIE_BREAK not in {o.metric for o in objectives}:
        lines.append(f"- Validation loss: {metrics.get(TIE_BREAK, float('nan')):.4f}.")
    return [*lines, *_measured(c)]


def _recorded(c: CardFacts, objective: Any, metrics: dict[str, float]) -> str:
    value = metrics.get(objective.metric)
    if value is None:
        return "not recorded"
    if objective.metric != "val_accuracy":
        return f"**{objective.format(value)}**"
    if not c.n_val:
        return f"**{_pct(value)}** (validation set size not recorded, so no interval)"
    k = round(value * c.n_val)
    lo, hi = wilson_interval(k, c.n_val)
    return f"**{_pct(value)}** ({k}/{c.n_val}); 95% Wilson interval **{_pct(lo)} - {_pct(hi)}**"


def _measured(c: CardFacts) -> Lines:
    lines: Lines = []
    measured, n = c.parity.get("reference_accuracy"), c.n_compared
    if measured is not None:
        k = round(measured * n)
        lo, hi = wilson_interval(k, n)
        which = (
            "validation" if c.same_data else "held-out (data not matching the search, see Warnings)"
        )
        lines.append(
            f"- Accuracy of the exported Keras model re-measured on {n} {which} images at export: "
            f"{_pct(measured)} ({k}/{n}; 95% Wilson interval {_pct(lo)} - {_pct(hi)})."
        )
    score = c.parity.get("search_score") or {}
    if score.get("passed"):
        recorded_loss = float(score["recorded_val_loss"] or float("nan"))
        lines.append(
            f"- Checked at export: the exported model reproduces the search's score on all {score['images']} "
            f"validation images (accuracy {_pct(score['accuracy'])}, loss {score['val_loss']:.4f}; "
            f"recorded {_pct(score['recorded_accuracy'])}, {recorded_loss:.4f})."
        )
    elif score.get("skipped"):
        lines.append(
            f"- Not checked at export that the model reproduces the search's score: {score['skipped']}."
        )
    return [
        *lines,
        _test_line(c.parity.get("test_score") or {}),
        "- The validation split also chose the epochs (early stopping) and this trial among the others, "
        "so the validation numbers are optimistic; the test score, on images the search never saw, is "
        "the one to rely on.",
    ]


def _test_line(test: dict[str, Any]) -> str:
    """The test-score line: measured once at export on the test split, next to the validation score."""
    if not test.get("images"):
        return f"- Test score: not measured, {test.get('skipped') or 'no test split'}."
    lo, hi = test["ci95"]
    val = test.get("validation_accuracy")
    return (
        f"- **Test accuracy: {_pct(test['accuracy'])}** ({test['correct']}/{test['images']} test images "
        f"never seen by the search; 95% Wilson interval {_pct(lo)} - {_pct(hi)}; {test['split']}), "
        f"balanced accuracy {_pct(test['balanced_accuracy'])}, macro F1 {test['macro_f1']:.4f}, "
        f"log loss {test['log_loss']:.4f}; validation accuracy {_pct(val) if val is not None else '-'}."
        + (f" Note: {test['note']}." if test.get("note") else "")
    )


def _refitted(c: CardFacts) -> str:
    """How the source model came to be when the search did not keep its layers (else nothing)."""
    refit = c.run.refit
    if not refit or c.run.variant:
        return ""
    return (
        f", assembled from layers refitted from the feature cache in {refit['seconds']:.1f} s (the "
        "search did not keep them), which reproduced the search's validation accuracy and loss"
    )


def _model(c: CardFacts) -> Lines:
    """Backbone, its weights and the source file, then every hyperparameter."""
    t, a, space = c.run.trial, c.run.trial.user_attrs, c.run.space
    h, w = c.size
    weights_hash = a.get("weights_sha256") or "none (random initialisation, no weight file)"
    lines = [
        "## Model",
        "",
        f"- Backbone: `{t.params.get('backbone')}` (plugin `{a.get('plugin', '?')}`), input resized to "
        f"{h}x{w} with bilinear interpolation; the backbone's preprocessing is inside the model.",
        f"- Backbone weights: {a.get('weights_origin', '?')}; SHA-256 `{weights_hash}`.",
        f"- Source model file: `{c.run.model_file.relative_to(c.run.run_dir)}`{_refitted(c)}.",
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
    return lines


def _training(c: CardFacts) -> Lines:
    """Both phases and the gate between them, as the trial recorded them."""
    a = c.run.trial.user_attrs
    hist = a.get("history") or {}
    p1 = len((hist.get("phase1") or {}).get("val_loss", []))
    p2 = len((hist.get("phase2") or {}).get("val_loss", []))
    stable = a.get("head_stable_epoch")
    phase2 = f"- Phase 2 (fine-tuning): {p2} epochs"
    if p2:
        kept = "yes" if a.get("phase2_kept") else "no, the phase-1 model was better"
        phase2 += f", unfrozen above `{a.get('cut')}` ({a.get('unfrozen_layers')} weight layers); kept: {kept}"
    return [
        "### Training history",
        "",
        f"- Phase 1 (frozen base, head only): {p1} epochs; head stable at epoch "
        f"{stable + 1 if stable is not None else '- (did not stabilise)'}.",
        f"- Gate to fine-tuning: {a.get('gate_reason') or a.get('gate', '?')}.",
        phase2 + ".",
    ]


def _formats(c: CardFacts) -> Lines:
    """The formats written, from the table: their files, what they are and how to call them."""
    lines = ["## Formats", "", "| format | files | what it is |", "|---|---|---|"]
    for fmt in c.written:
        files = ", ".join(f"`{_shown(c.folder, f)}`" for f in fmt.files)
        lines.append(f"| {fmt.name} | {files} | {fmt.description} |")
    lines += ["", "### How to call it", ""]
    for fmt in c.written:
        if fmt.usage is not None:
            facts = c.parity.get("formats", {}).get(fmt.name, {})
            lines.append(f"- {fmt.usage(c.size, facts)}")
    return lines


def _parity(c: CardFacts) -> Lines:
    """How every format compared with the Keras model, and the hashes of the files that shipped."""
    lines = [
        "## Files and parity",
        "",
        f"Every format was loaded back from disk and run on {c.n_compared} validation images next to the "
        f"Keras model (float formats: max |probability difference| <= {FLOAT_TOLERANCE:g}; quantized "
        f"formats such as int8: same top-1 class on >= {INT8_MIN_AGREEMENT:.0%} of images).",
        "",
        "| format | file | top-1 agreement | max abs prob. diff | accuracy |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in c.parity.get("formats", {}).items():
        diff, acc = r.get("max_abs_diff"), r.get("accuracy")
        file = _shown(c.folder, r.get("file", ""))
        lines.append(
            f"| {name} | `{file}` | {_pct(r['top1_agreement'])} | {diff:.2e} | "
            f"{_pct(acc) if acc is not None else '-'} |"
        )
    lines += [
        "",
        "SHA-256 of the files (of a folder: over its files' relative paths and bytes, in sorted order):",
        "",
    ]
    for name in owned_files():
        path = c.folder / name
        if path.exists() and name != CARD_FILE:
            lines.append(f"- `{_shown(c.folder, name)}`: `{_sha256(path)}` ({_size(path)} bytes)")
    return lines


def _limits(c: CardFacts) -> Lines:
    names, (h, w) = c.run.class_names, c.size
    lines = [
        "## Intended use and limits",
        "",
        f"- Sorting images into exactly these {len(names)} classes, for images like the training data. The "
        "model always answers one of them: it has no 'none of these' class, so out-of-scope images get a "
        "confident wrong label. Use the probabilities with a threshold chosen on your own data when "
        "abstaining matters.",
        f"- Images are stretched to {h}x{w} without keeping the aspect ratio, as in training.",
        "- Training decoded files with Pillow: EXIF orientation applied, transparency composited on white, "
        "images shrunk to 1024 px on the longest side first. `serving_bytes` composites PNG transparency the "
        "same way but does not apply EXIF orientation or the 1024 px shrink: send upright images, at most "
        "1024 px (examples/serving/client.py does).",
    ]
    if any(f.quantized for f in c.written):
        lines.append(
            "- Quantized probabilities are coarse (int8: steps of about 1/256); use the float model when "
            "calibrated probabilities matter."
        )
    return [
        *lines,
        f"- Accuracy was measured on {c.n_val or c.n_compared} validation images; the interval above shows "
        "how uncertain that is. It says nothing about data from other cameras, places or times.",
    ]


def _warnings(c: CardFacts) -> Lines:
    return ["## Warnings", "", *[f"- {w}" for w in c.notes]] if c.notes else []


def _shown(folder: Path, name: str) -> str:
    """A file name as the card shows it: folders end with ``/``."""
    return f"{name}/" if name and (folder / name).is_dir() else name


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
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


Section = Callable[[CardFacts], Lines]
SECTIONS: tuple[Section, ...] = (
    _header,
    _data,
    _metrics,
    _model,
    _training,
    _formats,
    _parity,
    _limits,
    _warnings,
)
