"""``export``: the chosen trial's model in every format of the table, staged, verified, then installed; and its
lineage recorded.

Its steps, each one function: check the arguments and ``--out``, open the run,
load the model and check it reproduces the search's score, stage (write every
selected format beside ``--out``), verify (parity), write the card, install,
record lineage.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np

from autotl.data.dataset import resize_images
from autotl.errors import UsageError, first_line
from autotl.export._card import card_facts, write_card
from autotl.export._card_variant import write_variant_card
from autotl.export._common import (
    CARD_FILE,
    LABELS_FILE,
    PARITY_FILE,
    PARITY_IMAGES,
    REPRESENTATIVE_IMAGES,
    ExportParityError,
    ExportResult,
    _input_size,
    _quiet,
)
from autotl.export._format import REPRESENTATIVE, Format, WriteContext
from autotl.export._parity import _check_reproduces, verify_export
from autotl.export._run import _dataset, _open_run, _Run
from autotl.export._staging import (
    check_out,
    install,
    quarantine,
    remove_stale,
    staging_dir,
    version_folder,
)
from autotl.export._table import owned_files, parse_formats, select
from autotl.export._test_score import test_split_score
from autotl.export._variant import check_variant_args, check_variant_reproduces, open_variant

if TYPE_CHECKING:
    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import Dataset

Say = Callable[[str], None]


def export(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    formats: str | Sequence[str] | None = None,
    trial: Optional[int] = None,
    quantize: Optional[str] = None,
    storage_url: Optional[str] = None,
    study_name: str = "autotl",
    data: Optional[str] = None,
    plugins: Sequence[str] = (),
    weights: Optional[WeightsSource] = None,
    registry: Optional[Registry] = None,
    on_event: Optional[Say] = None,
    ensemble: bool = False,
    tta: Optional[str] = None,
    version: int | str | None = None,
    refit: bool = True,
) -> ExportResult:
    """Export one trial's model of a run (the best by default) in ``formats`` (default: the table's default
    formats), and prove every format predicts as the Keras model does.

    Another trial's model is assembled from its stored layers, with its backbone's plugin (``plugins``
    or ``registry``) and ``weights`` (a ``WeightsSource``; default: what run.json records); ``data``
    replaces the search's data folder when it moved.  A trial whose layers were not kept is refitted
    from the feature cache first (:func:`autotl.engine.refit.refit_model`; ``refit=False`` refuses it).

    Before anything is written, the Keras model must reproduce the validation
    accuracy and loss the search recorded for the trial (when the data is the
    search's); then every format must predict what the Keras model predicts.
    Raises UsageError for bad arguments and ExportParityError otherwise.

    ``ensemble`` exports the run's ensemble instead (the stored selection, or a new one), and
    ``tta="flip"`` a model that also averages over the mirror image (see ``_variant``).
    ``version`` (a whole number, or ``"next"``) writes ``out_dir/<version>/``, a new version
    folder for a model server that watches ``out_dir``; an existing version is never rewritten.
    """
    _quiet()
    say = on_event or (lambda _msg: None)
    rows = select(parse_formats(formats), quantize)
    if trial is not None and trial < 0:
        raise UsageError(f"--trial must be a trial number (0 or more), got {trial}")
    tta = check_variant_args(trial, ensemble, tta)
    out = check_out(Path(out_dir) if version is None else version_folder(Path(out_dir), version))
    where = _Where(
        storage_url, study_name, data, tuple(plugins), registry, weights=weights, refit=refit
    )
    job = _open(Path(run_dir), trial, where, (ensemble, tta), rows, say)
    parity = _write(out, job, new_only=version is not None)
    _record_lineage(job.run, out, rows, job.dataset, job.notes)
    return ExportResult(
        out_dir=out,
        trial=job.run.trial.number,
        class_names=job.run.class_names,
        files=_files(out, rows),
        parity=parity,
        input_size=job.size,
        warnings=job.notes,
        variant=job.run.variant,
    )


class _Where(NamedTuple):
    """Where an export finds the run's study, its data, and what assembles a trial's model."""

    storage_url: Optional[str]
    study_name: str
    data: Optional[str]  # the search's data folder, if it moved
    plugins: tuple[str, ...]
    registry: Optional[Registry]
    weights: Optional[WeightsSource]
    refit: bool = True  # a trial whose layers were not kept is refitted from the feature cache


@dataclass
class _Job:
    """One export, opened: the run (or its ensemble or TTA variant), its data, the Keras model and the
    input size it resizes to, the formats to write, and what to note and say on the way."""

    run: _Run
    dataset: Dataset
    same_data: bool  # the data is the search's (so the search's scores must be reproduced)
    model: Any
    size: tuple[int, int]
    rows: Sequence[Format]
    notes: list[str]
    say: Say


def _open(
    run_dir: Path,
    trial: Optional[int],
    where: _Where,
    variant: tuple[bool, Optional[str]],
    rows: Sequence[Format],
    say: Say,
) -> _Job:
    """The run and the trial (or, with ``variant`` = (ensemble, tta), its variant), its data and model."""
    notes: list[str] = []
    loaded: list[tuple[Dataset, bool]] = []

    def data(run: _Run) -> tuple[Dataset, bool]:
        """The search's data set again (loaded once: a refit needs it before the export does)."""
        if not loaded:
            loaded.append(_dataset(run, where.data, where.plugins, notes))
        return loaded[0]

    run = _open_run(
        run_dir,
        trial,
        where.storage_url,
        where.study_name,
        plugins=where.plugins,
        registry=where.registry,
        weights=where.weights,
        say=say,
        data=data if where.refit else None,
    )
    dataset, same_data = data(run)
    ensemble, tta = variant
    if ensemble or tta:
        run = open_variant(
            run,
            dataset,
            ensemble,
            tta,
            registry=where.registry,
            weights=where.weights,
            plugins=where.plugins,
            say=say,
        )
    model, size = _load_model(run, say)
    return _Job(
        run=run,
        dataset=dataset,
        same_data=same_data,
        model=model,
        size=size,
        rows=rows,
        notes=notes,
        say=say,
    )


def _write(out: Path, job: _Job, new_only: bool = False) -> dict[str, Any]:
    """Check the model reproduces the search's score, score it on the test split, then stage every
    format, verify it, write the card and install it all in ``out``; the parity record."""
    run, say = job.run, job.say
    say(f"checking the model reproduces {_what(run)}'s validation score")
    check = check_variant_reproduces if run.variant else _check_reproduces
    reproduced = check(job.model, run, job.dataset, job.size, job.same_data)
    say(f"scoring {_what(run)} on the test split, once")
    test_score = test_split_score(job.model, run, job.dataset, job.size)
    for stale in remove_stale(out):
        say(f"removed {stale}, left by an export that did not finish")
    staging = staging_dir(out)
    try:
        seconds = _stage(staging, job)
        extra = {"search_score": reproduced, "test_score": test_score, "seconds": seconds}
        parity = _verify(staging, out, job, _exported(extra, run))
        facts = card_facts(
            staging,
            run,
            job.dataset,
            job.same_data,
            parity=parity,
            size=job.size,
            written=job.rows,
            notes=job.notes,
        )
        (write_variant_card if run.variant else write_card)(facts)
        install(staging, out, owned_files(), new_only=new_only)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return parity


def _what(run: _Run) -> str:
    """What is exported, for messages: "trial 3", or "ensemble+flip"."""
    return run.variant["name"] if run.variant else f"trial {run.trial.number}"


def _exported(extra: dict[str, Any], run: _Run) -> dict[str, Any]:
    """parity.json's extra fields: for an ensemble or TTA model, what it is (``exported``); for a trial
    refitted from the feature cache, what its refit measured (``refit``)."""
    if run.refit and not run.variant:
        extra = {**extra, "refit": run.refit}
    return {**extra, "exported": run.variant} if run.variant else extra


def _load_model(run: _Run, say: Say) -> tuple[Any, tuple[int, int]]:
    """The trial's Keras model and the input size it resizes to; a model of other classes is refused."""
    import keras

    say(f"loading trial {run.trial.number}: {run.model_file}")
    model = keras.saving.load_model(run.model_file, safe_mode=True)
    if int(model.output_shape[-1]) != len(run.class_names):
        raise UsageError(
            f"{run.model_file} predicts {model.output_shape[-1]} classes but the run names "
            f"{len(run.class_names)}; the run folder is inconsistent"
        )
    return model, _input_size(model)


def _evenly(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def _stage(staging: Path, job: _Job) -> dict[str, float]:
    """``labels.txt`` and every selected format written into ``staging``; the seconds each format took."""
    run, size, say = job.run, job.size, job.say
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    labels = staging / LABELS_FILE
    labels.write_text("".join(f"{c}\n" for c in run.class_names), encoding="utf-8")
    representative = None
    if any(REPRESENTATIVE in f.needs for f in job.rows):
        representative = _representative(job.dataset, size, say)
    ctx = WriteContext(staging, run.model_file, run.class_names, size, labels, representative)
    seconds: dict[str, float] = {}
    for fmt in job.rows:
        say(f"writing {fmt.name}: {', '.join(fmt.files)}")
        start = time.perf_counter()
        fmt.write(job.model, ctx)
        seconds[fmt.name] = time.perf_counter() - start
    return seconds


def _representative(dataset: Dataset, size: tuple[int, int], say: Say) -> np.ndarray:
    """Training images resized as the model's Resizing layer does: what a quantized format calibrates on."""
    chosen = _evenly(len(dataset.train), REPRESENTATIVE_IMAGES)
    say(f"taking {len(chosen)} training images to calibrate quantization")
    return np.concatenate([resize_images(dataset.train.load(i)[None], size) for i in chosen])


def _verify(staging: Path, out: Path, job: _Job, extra: dict[str, Any]) -> dict[str, Any]:
    """Parity of every staged format on validation images, written to ``parity.json``; a failure moves the
    staging folder to ``OUT.unverified`` and raises."""
    run, dataset, say = job.run, job.dataset, job.say
    picked = _evenly(len(dataset.val), PARITY_IMAGES)
    images = [dataset.val.load(i) for i in picked]
    say(f"checking parity on {len(images)} validation images")
    try:
        parity = verify_export(staging, job.model, images, dataset.val.labels[picked])
    except ExportParityError as exc:
        failed = {**(exc.parity or {}), **extra, "error": str(exc)}
        parity = _write_parity(staging, failed, run, dataset)
        where = quarantine(staging, out)
        raise ExportParityError(
            f"{exc}; nothing written to {out}, the unverified files are in {where}", parity
        ) from None
    return _write_parity(staging, {**parity, **extra}, run, dataset)


def _write_parity(
    folder: Path, parity: dict[str, Any], run: _Run, dataset: Dataset
) -> dict[str, Any]:
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


def _files(out: Path, rows: Sequence[Format]) -> dict[str, Path]:
    """``ExportResult.files``: each format written, by its table name, then the files every export has."""
    files = {f.name: out / f.main for f in rows if (out / f.main).exists()}
    return {
        **files,
        "labels": out / LABELS_FILE,
        "model_card": out / CARD_FILE,
        "parity": out / PARITY_FILE,
    }


def _record_lineage(
    run: _Run, out: Path, rows: Sequence[Format], dataset: Dataset, notes: list[str]
) -> None:
    """Record the exported files in the study's lineage tables (``autotl lineage FILE`` finds them); never fails the export."""
    try:
        from autotl.run.lineage import record_model

        summary = run.data_summary or {"source": dataset.source, "fingerprint": dataset.fingerprint}
        # an ensemble is recorded once per member (each with its backbone and weights)
        members = sorted(run.variant["members"]) if run.variant else [run.trial.number]
        trials = {t.number: t for t in run.study.get_trials(deepcopy=False)}
        kind = "ensemble_export" if len(members) > 1 else "export"
        for name in (n for f in rows for n in f.recorded()):
            if (out / name).is_file():
                for number in members:
                    record_model(
                        run.storage_url,
                        run.study.study_name,
                        trials[number],
                        out / name,
                        kind,
                        data=summary,
                    )
    except Exception as exc:  # the verified files are in place; say why lineage is missing
        notes.append(f"lineage not recorded ({first_line(exc)[:200]})")
