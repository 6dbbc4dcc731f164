"""The exported model when it is not one trial's own file: the run's ensemble, or a model with flip TTA.

``export(..., ensemble=True)`` exports the ensemble chosen by
:mod:`autotl.ensemble` (the stored selection, or a new one), and ``tta="flip"``
a model that also averages over the mirror image (of the ensemble, or of the
chosen trial).  Everything else in the export is the same path: the model file
(built by :mod:`autotl.ensemble` in the run folder) is "the model being
exported", every format is written from it and checked against it.  What
differs is opening it (:func:`open_variant`) and what it must reproduce
before anything is written (:func:`check_variant_reproduces`): each member
alone must score what the search recorded for it, and the combined model must
score what the members' cached predictions say it should.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from autotl.ensemble import (
    ENSEMBLE,
    current_selection,
    member_scores,
    trial_variant,
    variant_model,
    variant_name,
)
from autotl.ensemble.model import check_tta
from autotl.errors import UsageError
from autotl.export._common import REPRODUCE_LOSS_ATOL, REPRODUCE_LOSS_RTOL, ExportParityError
from autotl.export._run import _Run
from autotl.scoring.metrics import accuracy, log_loss
from autotl.scoring.objective import trial_metrics

if TYPE_CHECKING:
    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import Dataset

Say = Callable[[str], None]


def check_variant_args(trial: Optional[int], ensemble: bool, tta: Optional[str]) -> Optional[str]:
    """``tta`` as a mode (None for none); one-line UsageErrors for what cannot be combined."""
    mode = check_tta(tta)
    if ensemble and trial is not None:
        raise UsageError(
            "--ensemble exports the run's ensemble and --trial N one trial's model: pass one of them"
        )
    return mode


def open_variant(
    run: _Run,
    dataset: Dataset,
    ensemble: bool,
    tta: Optional[str],
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    plugins: Sequence[str] = (),
    say: Say = lambda _m: None,
) -> _Run:
    """``run`` with the ensemble's (or the trial's TTA) model file as the model exported, and what it
    must reproduce (``run.variant``)."""
    folder, study = run.folder, run.study
    kw: dict[str, Any] = {
        "registry": registry,
        "weights": weights,
        "plugins": tuple(plugins),
        "say": say,
    }
    info: dict[str, Any] = {}
    if ensemble:
        name = variant_name(ENSEMBLE, tta)
        selection = current_selection(
            folder, study, need=name, tta=tta or "flip", dataset=dataset, **kw
        )
        v = selection.named(name)
        path = variant_model(folder, study, selection, name, **kw)
        info = {
            "top_k": selection.top_k,
            "candidates": selection.candidates,
            "objective": selection.objective,
            "counts": selection.counts,
            "test": selection.test,
            "scores": {x.name: _plain(x) for x in selection.variants},
            "notes": selection.notes,
        }
    else:
        v = trial_variant(folder, study, run.trial, tta or "flip", dataset, **kw)
        path = folder.path / str(v.model)
    members = member_scores(folder, study, list(v.members), dataset, **kw)
    variant = {
        "name": v.name,
        "kind": "ensemble" if ensemble else "tta",
        "members": dict(v.members),
        "tta": v.tta,
        "input_size": list(v.input_size or ()),
        "val": dataclasses.asdict(v.val),
        "test": dataclasses.asdict(v.test) if v.test else None,
        "member_val": {n: dataclasses.asdict(s) for n, s in members.items()},
        **info,
    }
    return dataclasses.replace(run, model_file=path, variant=variant)


def _plain(v: Any) -> dict[str, Any]:
    d = dataclasses.asdict(v)
    return {k: d[k] for k in ("members", "tta", "val", "test", "latency")}


def _agrees(acc: float, loss: float, rec_acc: float, rec_loss: Optional[float], n: int) -> bool:
    """The rule ``_check_reproduces`` applies: at most one image flipped, loss within tolerance."""
    off_by = abs(round(acc * n) - round(rec_acc * n))
    loss_ok = rec_loss is None or abs(
        loss - float(rec_loss)
    ) <= REPRODUCE_LOSS_ATOL + REPRODUCE_LOSS_RTOL * abs(float(rec_loss))
    return off_by <= 1 and loss_ok


def _check_members(run: _Run) -> list[dict[str, Any]]:
    """Each member alone must score what the search recorded for it (else: other weights, or a wrong file)."""
    by_number = {t.number: t for t in run.study.get_trials(deepcopy=False)}
    out = []
    for number, s in run.chosen_variant()["member_val"].items():
        recorded = trial_metrics(by_number[int(number)])
        rec_acc, rec_loss = float(recorded["val_accuracy"]), recorded.get("val_loss")
        ok = _agrees(s["accuracy"], s["loss"], rec_acc, rec_loss, s["images"])
        out.append(
            {
                "trial": int(number),
                "accuracy": s["accuracy"],
                "recorded_accuracy": rec_acc,
                "passed": ok,
            }
        )
        if not ok:
            raise ExportParityError(
                f"member trial {number} scores accuracy {s['accuracy']:.4f}, loss {s['loss']:.4f} on the "
                f"{s['images']} validation images, but the search recorded {rec_acc:.4f}, "
                f"{float(rec_loss or float('nan')):.4f}: it is not the model the search scored (other backbone "
                "weights or plugin version?); nothing was exported",
                {"search_score": {"members": out, "passed": False}, "passed": False},
            )
    return out


def check_variant_reproduces(
    model: Any, run: _Run, dataset: Dataset, size: tuple[int, int], same_data: bool
) -> dict[str, Any]:
    """The members reproduce the search's scores, and the combined model the score their predictions give."""
    if not same_data:
        return {
            "skipped": "the data re-read now is not known to be the search's validation split (fingerprint differs or was not recorded)"
        }
    members = _check_members(run)
    probs = np.concatenate(
        [np.asarray(model.predict_on_batch(b), np.float64) for b in dataset.val.batches(size, 32)]
    )
    y = np.asarray(dataset.val.labels)
    n = len(y)
    acc, loss = accuracy(probs, y), log_loss(probs, y)
    want = run.chosen_variant()["val"]
    record = {
        "images": n,
        "accuracy": acc,
        "recorded_accuracy": want["accuracy"],
        "val_loss": loss,
        "recorded_val_loss": want["loss"],
        "members": members,
        "passed": _agrees(acc, loss, want["accuracy"], want["loss"], n),
    }
    if not record["passed"]:
        raise ExportParityError(
            f"the {run.chosen_variant()['name']} model ({run.model_file.name}) scores accuracy {acc:.4f}, loss {loss:.4f} on "
            f"the {n} validation images, but its members' predictions give {want['accuracy']:.4f}, "
            f"{want['loss']:.4f}: it is not the model selected; nothing was exported",
            {"search_score": record, "passed": False},
        )
    return record
