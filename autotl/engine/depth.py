"""Fine-tuning depth that follows the data: the range of ``unfreeze_blocks`` widens when the trials say so.

How many blocks to unfreeze depends on how far the data is from the
backbone's pretraining: on ImageNet-like photos the top two or three blocks
are right, on scanned digits or rotated photos the frozen features are poor and
fine-tuning needs to reach deeper.  A user cannot know in advance which case
they are in, so a space with ``phase2.deepen`` starts with its shallow range
(cheap: three boundaries cached) and widens it to ``deepen.high`` once, when
``deepen.after`` fine-tuning trials are complete and either

* the best frozen head is weak: its validation accuracy is under ``deepen.weak_head``; or
* fine-tuning near the range's top pays: a trial that unfroze at least
  ``unfreeze_blocks.high - 1`` blocks kept them (phase 2 beat its frozen head) and
  took at least ``deepen.gain`` off the frozen head's validation loss (the largest
  such gain is the evidence, and that trial is the one tried deeper).  Where
  fine-tuning the top few blocks helps that much, the frozen features are far
  from what the data needs, and the issue's measurements (#24) found the best
  depth beyond the range there.

The decision is stored in the study (user attribute ``depth``), so every worker
and a resumed search see the same range; the sampler then draws
``unfreeze_blocks`` over the wider range (Optuna's TPE keeps the earlier
trials' values, which lie inside it), and the trial that decided it is tried again at
``probe_depths`` deeper depths, so the sampler has evidence there at once.  The
seed's rules are the trainer's and are untouched: frozen phase first, the gate
on the head's loss, the low rate, BatchNormalization frozen.

Deeper trials cost more (on digits 70-93 s at 6-8 blocks against 26-27 s at
2), so a widened search with a trial budget is bounded in time: it stops
before a trial that would take its trials' seconds past ``deepen.cost`` times
what the shallow range would have spent on the whole budget (:func:`over_cost`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Optional

from autotl.engine.space import SearchSpace

__all__ = [
    "DEPTH_ATTR",
    "DEPTH_PROBE",
    "widened_high",
    "decide",
    "probe_depths",
    "frozen_accuracy",
    "gain",
    "over_cost",
]

#: The study's user attribute holding the widening: ``{"high", "reason", "after_trial", ...}``.
DEPTH_ATTR = "depth"
#: A probe trial's user attribute: the number of the trial it tries deeper.
DEPTH_PROBE = "depth_probe_of"
#: The study's user attribute recording that a widened search stopped at ``deepen.cost``.
DEPTH_STOP = "depth_stop"
PARAM = "unfreeze_blocks"


def widened_high(study: Any) -> Optional[int]:
    """The top of ``unfreeze_blocks`` once the study widened it, else None."""
    return (study.user_attrs.get(DEPTH_ATTR) or {}).get("high")


def _frozen(trial: Any) -> tuple[float, float]:
    """The trial's frozen head at the epoch early stopping restored: validation loss and accuracy."""
    from autotl.training.trainer import restored_epoch

    h1 = (trial.user_attrs.get("history") or {}).get("phase1") or {}
    if not h1.get("val_loss"):
        return float("inf"), 0.0
    _epoch, loss, accuracy = restored_epoch(h1)
    return float(loss), float(accuracy)


def frozen_accuracy(trial: Any) -> float:
    """The trial's frozen head's validation accuracy, at the epoch early stopping restored."""
    return _frozen(trial)[1]


def gain(trial: Any) -> float:
    """The share of its frozen head's validation loss a kept phase 2 took off (0 when phase 2 was not kept)."""
    frozen = _frozen(trial)[0]
    final = (trial.user_attrs.get("metrics") or {}).get("val_loss")
    if not trial.user_attrs.get("phase2_kept") or final is None or not 0 < frozen < float("inf"):
        return 0.0
    return float(1.0 - final / frozen)


def decide(ranked: Sequence[Any], space: SearchSpace) -> Optional[dict[str, Any]]:
    """The widening to record, from complete trials ``ranked`` best first; None while the evidence is not there.

    A pure function of the trials, so a test runs it on a real study's trials.
    """
    deepen, high = space.phase2.deepen, space.phase2.unfreeze_blocks.high
    fine = [t for t in ranked if PARAM in t.params]
    if deepen is None or len(fine) < deepen.after:
        return None
    frozen = max(frozen_accuracy(t) for t in ranked)
    near_top = max(high - 1, 1)
    deep = [t for t in fine if t.params[PARAM] >= near_top and t.user_attrs.get("phase2_kept")]
    # the largest gain, not the best-ranked trial's: a trial can rank first with a rate too low to
    # fine-tune at all (digits, seed 1: #2 at 1e-6 took 8% off and ranked above #1, which took 14%
    # at 6e-5, and the range widened 15 trials late); ties go to the better-ranked
    best = max(deep, key=gain) if deep else None
    took = gain(best) if best else 0.0
    evidence = {
        "frozen_accuracy": round(frozen, 4),
        "trials": len(fine),
        **(
            {"trial": best.number, "blocks": best.params[PARAM], "gain": round(took, 4)}
            if best
            else {}
        ),
    }
    if frozen < deepen.weak_head:
        reason = (
            f"the best frozen head reached {frozen:.3f} validation accuracy, under deepen.weak_head "
            f"{deepen.weak_head:g}: the data is far from the backbone's pretraining"
        )
    elif best is not None and took >= deepen.gain:
        reason = (
            f"a trial that fine-tuned {near_top}+ blocks (#{best.number}, {best.params[PARAM]}) took "
            f"{took:.0%} off its frozen head's validation loss (deepen.gain {deepen.gain:.0%})"
        )
    else:
        return None
    return {"high": deepen.high, "from": high, "reason": reason, "evidence": evidence}


def probe_depths(old_high: int, new_high: int) -> list[int]:
    """The depths the best trial is tried at once the range widens: the middle of the new part and its top."""
    middle = (old_high + new_high + 1) // 2
    return sorted({middle, new_high})


def boundary_cost(
    cache: Any, base: Any, pattern: str, old_high: int, new_high: int, rows: int
) -> dict[str, Any]:
    """What the deeper boundaries of ``base`` would cost the feature cache: their names and bytes.

    Said before any is built; each is built only when a trial first fine-tunes from it.
    """
    from autotl.training.model import block_boundaries

    boundaries = block_boundaries(base, pattern)
    cuts = boundaries[max(len(boundaries) - new_high, 0) : max(len(boundaries) - old_high, 0)]
    sizes = [cache.entry_bytes(base, c, rows) for c in cuts]
    return {"cuts": cuts, "bytes": int(sum(sizes)), "largest": int(max(sizes, default=0))}


def over_cost(
    trials: Sequence[Any], old_high: int, budget: int, cost: float, now: datetime
) -> Optional[dict[str, Any]]:
    """The figures when the next trial of a widened search would take it past its time bound, else None.

    The bound is in trial-seconds, summed over every worker: ``cost`` times the
    budget at the mean duration of the trials inside the shallow range
    (``unfreeze_blocks`` at most ``old_high``, or none: phase 1 alone), which is
    what the shallow range would have spent on ``budget`` trials.  The next
    trial is reckoned at the mean of the deeper ones (the shallow mean until one
    is done), so the bound is not overshot by one deep trial.  What both ranges
    pay alike (opening the study, the full caches between trials) is outside it.
    The shallow mean is mostly the first trials', which the pruner's warm-up
    never cuts, so it runs high: at ``cost`` 1.0 a 20-trial search on digits took
    1.12-1.23x the fixed range's wall time (``docs/guide/depth.md``).
    """
    from optuna.trial import TrialState

    from autotl.run.storage import trial_seconds

    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    finished = [(t.params.get(PARAM, 0), trial_seconds(t, now) or 0.0) for t in done]
    shallow = [s for blocks, s in finished if blocks <= old_high]
    deep = [s for blocks, s in finished if blocks > old_high]
    if not shallow:
        return None
    mean = sum(shallow) / len(shallow)
    running = (t for t in trials if t.state == TrialState.RUNNING)  # other workers'
    spent = sum(shallow) + sum(deep) + sum(trial_seconds(t, now) or 0.0 for t in running)
    following = sum(deep) / len(deep) if deep else mean
    bound = cost * budget * mean
    if spent + following <= bound:
        return None
    return {
        "trials": len(done),
        "spent_seconds": round(spent, 1),
        "shallow_seconds": round(budget * mean, 1),
        "bound_seconds": round(bound, 1),
        "next_seconds": round(following, 1),
    }
