"""Section 4's data: how the search went (history, parameter importances, score by setting)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

from autotl.report._common import _described
from autotl.report._rows import history
from autotl.scoring.objective import Objective, Objectives

if TYPE_CHECKING:
    from optuna import Study


def _importances(study: Study, trials: list[Any]) -> dict[str, Any]:
    """fANOVA importances of the parameters that varied, or why there are none."""
    done = [t for t in trials if t.state.name == "COMPLETE" and t.values]  # the complete rows
    names = sorted({k for t in done for k in t.params})
    varying = [k for k in names if len({json.dumps(t.params.get(k)) for t in done}) > 1]
    if len(done) < 2 or not varying:
        return {
            "values": None,
            "note": f"not enough trials: importances need at least 2 complete trials whose parameters vary ({len(done)} complete)",
        }
    if len({tuple(t.values) for t in done}) < 2:
        return {
            "values": None,
            "note": f"not enough trials: all {len(done)} complete trials scored the same, so no parameter explains a difference",
        }
    try:
        import optuna

        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        values = optuna.importance.get_param_importances(
            study,
            evaluator=evaluator,
            params=varying,
            target=(lambda t: t.values[0]) if len(study.directions) > 1 else None,
        )
        return {
            "values": {k: float(v) for k, v in values.items()},
            "note": f"fANOVA over {len(done)} complete trials",
        }
    except Exception as exc:
        return {"values": None, "note": f"not enough trials for importances ({_described(exc)})"}


def _by_backbone(complete: list[dict[str, Any]], o: Objective) -> dict[str, dict[str, Any]]:
    """Per backbone: the primary objective's values, their mean, max and best (by its direction)."""
    out: dict[str, dict[str, Any]] = {}
    for r in complete:
        b = out.setdefault(str(r["backbone"]), {"values": [], "trials": []})
        b["values"].append(r["values"][o.name])
        b["trials"].append(r["number"])
    for b in out.values():
        vals = b["values"]
        b.update(
            n=len(vals), mean=sum(vals) / len(vals), max=max(vals), best=min(vals, key=o.signed)
        )
    return out


def _ranges(space: dict[str, Any]) -> dict[str, list[Any]]:
    """The searched ranges of the phase-2 parameters, so plots show the whole range."""
    p2 = space.get("phase2") or {}
    blocks, rate = p2.get("unfreeze_blocks") or {}, p2.get("learning_rate") or {}
    return {
        "unfreeze_blocks": [blocks.get("low"), blocks.get("high")],
        "finetune_lr": [rate.get("low"), rate.get("high")],
    }


def search_record(
    study: Study,
    trials: list[Any],
    rows: list[dict[str, Any]],
    space: dict[str, Any],
    objectives: Objectives,
) -> dict[str, Any]:
    o = objectives.primary
    complete = [r for r in rows if r["state"] == "complete" and r["values"].get(o.name) is not None]
    points = [
        {
            "number": r["number"],
            "backbone": r["backbone"],
            "unfreeze_blocks": r["unfreeze_blocks"],
            "finetune_lr": r["finetune_lr"],
            "phase2_ran": r["gate"] == "passed",
            "value": r["values"][o.name],
            "val_accuracy": r["val_accuracy"],
        }
        for r in complete
    ]
    return {
        "history": history(rows, objectives),
        "importances": _importances(study, trials),
        "by_backbone": _by_backbone(complete, o),
        "points": points,
        "ranges": _ranges(space),
        "depth": _depth(study),
    }


def _depth(study: Study) -> Optional[dict[str, Any]]:
    """Whether the fine-tuning depth widened (``phase2.deepen``), why, and whether its time bound ended the search."""
    from autotl.engine.depth import DEPTH_ATTR, DEPTH_STOP

    decision = study.user_attrs.get(DEPTH_ATTR)
    if not decision:
        return None
    keys = ("from", "high", "reason", "after_trial", "probes")
    return {**{k: decision.get(k) for k in keys}, "stop": study.user_attrs.get(DEPTH_STOP)}
