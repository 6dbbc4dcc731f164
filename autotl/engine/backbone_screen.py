"""Backbone screening: every backbone is scored on a stratified sample; only those that earn it go on.

A search used to cache every backbone of its space on all of the data before
its first trial, so a space of six backbones cost what all six cost, much of
it on backbones the search would not keep.  With screening (``backbone_screening``
in the space, on by default with two backbones or more):

1. **The sample stage.**  Each backbone is cached on a stratified sample of
   train and val (``sample`` images, :func:`autotl.data.sample.stratified_sample`),
   a phase-1 head per head width is fitted on it (the head trainer takes well
   under a second on pooled features), and LogME (:mod:`autotl.scoring.logme`) is
   computed from the same features.  The build's images per second are measured.
   Each result is stored in the study (:mod:`autotl.run.stages`) as soon as it
   exists, so a resumed search or another worker never computes it again.
2. **The decision** (:func:`decide`): a deterministic function of the stored
   results and the space's rule, stored once for the study (the first worker's
   holds), so every worker goes on with the same backbones.
3. **The full caches** of the kept backbones are built lazily, cheapest first,
   one trial apart (:class:`FullCaches`): the first trial starts when the first
   full cache is ready, each build's time is estimated from the measured rate and
   said before it starts, and under ``--timeout`` a build that cannot finish in
   the time left is said in one line and not started.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from autotl.errors import UsageError
from autotl.scoring.stats import wilson_interval
from autotl.training.cache import BuildStopped

if TYPE_CHECKING:
    from autotl.data.dataset import Dataset
    from autotl.engine.space import BackboneScreening, SearchSpace
    from autotl.training.cache import CachedFeatures

__all__ = [
    "RESULT_KEY",
    "DECISION_KEY",
    "PILOT_KEY",
    "PILOT_DECISION_KEY",
    "decide_pilot",
    "pilot_of",
    "sample_images",
    "COLUMNS",
    "score_features",
    "decide",
    "clock",
    "FullCaches",
    "screening_rows",
]

RESULT_KEY, DECISION_KEY = "backbone_screening/sample/", "backbone_screening/decision"
#: The pilot rung's results and its cut, before the sample (``backbone_screening.pilot``).
PILOT_KEY, PILOT_DECISION_KEY = "backbone_screening/pilot/", "backbone_screening/pilot_decision"
Event = Callable[[dict[str, Any]], None]


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for people."""
    s = round(max(seconds, 0))
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def score_features(feats: CachedFeatures, space: SearchSpace, n_classes: int) -> dict[str, Any]:
    """The sample scores of one backbone's cached pooled features: the best phase-1 head's validation
    accuracy (one head per width, at most three, lowest dropout) and LogME on the training rows."""
    from autotl.scoring.logme import logme
    from autotl.training.fitting import Schedule, fit_head, head_probabilities
    from autotl.training.model import build_head
    from autotl.training.seeding import set_random_seed

    train, val = feats.train.rows().astype(np.float32), feats.val.rows().astype(np.float32)
    val_labels = np.asarray(feats.val_labels)
    heads = []
    started = time.perf_counter()
    for width in list(space.head.width)[:3]:
        set_random_seed(space.seed)
        head = build_head(n_classes, width, space.head.dropout.low)
        head[1].build((None, train.shape[1]))
        head[2].build((None, width))
        p1 = space.phase1
        schedule = Schedule(
            lr=p1.learning_rate,
            epochs=p1.epochs,
            patience=p1.patience,
            batch_size=space.batch_size,
            dropout=space.head.dropout.low,
            seed=space.seed,
        )
        fit_head(head, (train, feats.train_labels), (val, val_labels), schedule)
        hits = int(np.sum(head_probabilities(head, val).argmax(axis=1) == val_labels))
        heads.append({"head_width": width, "val_correct": hits})
    best = max(heads, key=lambda h: (h["val_correct"], -h["head_width"]))
    return {
        "accuracy": best["val_correct"] / max(len(val_labels), 1),
        "val_images": len(val_labels),
        # what always answering the most frequent class scores: a backbone must be shown better
        "chance": float(np.bincount(val_labels).max() / max(len(val_labels), 1)),
        "train_images": len(train),
        "heads": heads,
        "logme": logme(train, feats.train_labels),
        "score_seconds": round(time.perf_counter() - started, 3),
    }


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf((1 + confidence) / 2)


def _interval(r: dict[str, Any], z: float) -> tuple[float, float]:
    return wilson_interval(r["accuracy"] * r["val_images"], r["val_images"], z)


def _shown(name: str, r: dict[str, Any], z: float) -> str:
    lo, hi = _interval(r, z)
    return (
        f"{name}: sample accuracy {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}], LogME {r['logme']:.3f}"
    )


def _verdict(
    name: str,
    r: dict[str, Any],
    best: str,
    floor: float,
    full: bool,
    rule: BackboneScreening,
    chance: bool = True,
) -> str:
    """Why ``name`` (sample result ``r``) goes on or not, given the best one's name and lower bound
    ``floor``, and whether ``keep`` backbones are already ``full``: a reason starting "kept" or "dropped"."""
    low, high = _interval(r, _z(rule.confidence))
    if name == best:
        return "kept: the best on the sample"
    if chance and low <= r.get("chance", -1.0):
        return (
            f"dropped: not shown better than chance: its sample accuracy's lower bound {low:.3f} "
            f"is at most {r['chance']:.3f}, the most frequent class's share"
        )
    if full:
        return f"dropped: not among the {rule.keep} best ({rule.rule} rule, keep {rule.keep})"
    if rule.rule == "margin" and high < floor:
        return (
            f"dropped: its sample accuracy's upper bound {high:.3f} is below "
            f"the best's lower bound {floor:.3f} ({best})"
        )
    if rule.rule == "margin":
        return f"kept: within the best's {rule.confidence:.0%} margin"
    return f"kept: among the {rule.keep} best by {rule.signal}"


def decide(
    results: dict[str, dict[str, Any]], rule: BackboneScreening, chance: bool = True
) -> dict[str, Any]:
    """Which backbones go on to the full data, and why each does or does not: a function of the sample
    ``results`` (backbone -> :func:`score_features`' record, or ``{"error": ...}``) and ``rule`` alone,
    so it is the same on every worker and for a seed.

    ``margin``: a backbone goes on when the upper bound of its sample accuracy's
    interval reaches the lower bound of the best one's (it is not shown to be
    worse).  ``top``: the ``keep`` best by ``signal``.  Either way, a backbone
    whose interval's lower bound does not exceed chance (always answering the
    sample's most frequent class) is not shown to be worth anything and is
    dropped (unless ``chance`` is False).  Ties are broken by the other signal,
    then the name; at most ``keep`` go on, and the best always does.
    """
    scored = {n: r for n, r in results.items() if "error" not in r}
    primary = "logme" if rule.rule == "top" and rule.signal == "logme" else "accuracy"
    secondary = "accuracy" if primary == "logme" else "logme"
    ranked = sorted(scored, key=lambda n: (-scored[n][primary], -scored[n][secondary], n))
    reasons = {
        n: f"dropped: its sample failed ({r['error']})"
        for n, r in results.items()
        if n not in scored
    }
    kept: list[str] = []
    for name in ranked:
        floor = _interval(scored[ranked[0]], _z(rule.confidence))[0]
        why = _verdict(
            name, scored[name], ranked[0], floor, len(kept) >= rule.keep, rule, chance=chance
        )
        reasons[name] = why
        if why.startswith("kept"):
            kept.append(name)
    return {
        "kept": kept,
        "ranking": ranked,
        "reasons": reasons,
        "rule": rule.model_dump(),
        "z": _z(rule.confidence),
    }


def decide_pilot(results: dict[str, dict[str, Any]], rule: BackboneScreening) -> dict[str, Any]:
    """Which backbones go on from the pilot rung to the sample: :func:`decide`'s margin rule at
    ``rule.pilot_confidence``, without the chance rule and the ``keep`` cut (on a few hundred images
    the intervals are wide, and the sample decides the rest)."""
    pilot = rule.model_copy(
        update={"rule": "margin", "confidence": rule.pilot_confidence, "keep": max(1, len(results))}
    )
    cut = decide(results, pilot, chance=False)
    size = next((sample_images(r) for r in results.values() if "error" not in r), 0)
    cut["reasons"] = {
        n: "on to the sample"
        if n in cut["kept"]
        else why.replace("dropped:", f"dropped at the pilot ({size:,} images):", 1)
        for n, why in cut["reasons"].items()
    }
    return cut


def sample_images(r: dict[str, Any]) -> int:
    """The images (train and val) a backbone's stored sample or pilot result was scored on."""
    return int(r["train_images"]) + int(r["val_images"])


def pilot_of(dataset: Dataset, space: SearchSpace, sample: Dataset) -> Optional[Dataset]:
    """The pilot rung's stratified sample (drawn from the sample's images), or None when the space asks
    for none or it would hold more than half the sample's images (many classes keep two images each in
    each split): then the pilot would cost most of the sample, and the survivors pay both."""
    from autotl.data.sample import stratified_sample

    n, size = space.backbone_screening.pilot, len(sample.train) + len(sample.val)
    if n <= 0 or n >= size:
        return None
    pilot = stratified_sample(sample, n, space.seed)
    return pilot if 2 * (len(pilot.train) + len(pilot.val)) <= size else None


class FullCaches:
    """The kept backbones' full caches, built one at a time between trials, cheapest first.

    ``build(name, stop)`` builds one (abandoned, with nothing kept, once ``stop()`` says so);
    ``sizes`` (backbone -> its base's parameter count) orders those without an estimate;
    ``estimates`` are seconds per backbone from the sample's measured images
    per second.  A backbone is *ready* once its full cache is there; the
    sampler draws only ready ones while others wait (:class:`autotl.engine.failures.SearchBackbones`).
    """

    def __init__(
        self,
        pending: Sequence[str],
        estimates: dict[str, Optional[float]],
        build: Callable[[str, Callable[[], bool]], None],
        emit: Event,
        deadline: Optional[float] = None,
        sizes: Optional[dict[str, int]] = None,
    ) -> None:
        # without a measured rate (no sample stage), the base's parameter count stands in for its cost
        known = sizes or {}
        self.pending = sorted(pending, key=lambda n: (estimates.get(n) or 0.0, known.get(n, 0), n))
        self.estimates, self.build, self.emit, self.deadline = estimates, build, emit, deadline
        self.ready: list[str] = []
        self.refused: dict[str, str] = {}

    def rotate(self, k: int) -> None:
        """Worker ``k`` starts from another backbone (other workers build the rest at the same time)."""
        if self.pending:
            k %= len(self.pending)
            self.pending = self.pending[k:] + self.pending[:k]

    def due(self, trials_done: int) -> bool:
        """Whether the next full cache is due: none is ready yet, or each ready one has had a trial."""
        return bool(self.pending) and trials_done >= len(self.ready)

    def next(self, should_stop: Callable[[], bool]) -> Optional[str]:
        """Build the next pending full cache unless ``--timeout`` leaves too little time; its name, or None."""
        while self.pending and not should_stop():
            name = self.pending.pop(0)
            estimate = self.estimates.get(name)
            left = None if self.deadline is None else self.deadline - time.monotonic()
            if estimate is not None and left is not None and estimate > left:
                why = (
                    f"its full cache needs about {clock(estimate)} (measured on the sample), more than the "
                    f"{clock(left)} left of --timeout: not started"
                )
                self.refused[name] = f"not cached: {why}"
                self.emit({"warning": f"backbone {name}: {why}"})
                continue
            if estimate and estimate >= 1:
                self.emit({"info": f"{name}: building its full cache, about {clock(estimate)}"})
            try:
                self.build(name, should_stop)
            except BuildStopped:  # Ctrl-C: built again on resume
                self.pending.insert(0, name)
                return None
            except (UsageError, KeyboardInterrupt):
                raise
            except Exception:  # a backbone's own fault: its first trial fails with the reason
                pass
            self.ready.append(name)
            return name
        return None


def estimate_seconds(result: dict[str, Any], images: int) -> Optional[float]:
    """Seconds of a full cache of ``images`` at the rate measured on the sample (None: not measured)."""
    rate = result.get("images_per_second")
    return images / rate if rate and math.isfinite(rate) and rate > 0 else None


def sample_of(dataset: Dataset, space: SearchSpace) -> Dataset:
    """The stratified sample the stage caches every backbone on (the data itself when it is small)."""
    from autotl.data.sample import stratified_sample

    return stratified_sample(dataset, space.backbone_screening.sample, space.seed)


#: The columns of :func:`screening_rows` (``Run.screening()``'s DataFrame, the report's table).
COLUMNS = {
    "backbone": "backbone",
    "sample_images": "sample images",
    "sample_accuracy": "sample head accuracy",
    "accuracy_low": "interval low",
    "accuracy_high": "interval high",
    "logme": "LogME",
    "images_per_second": "img/s",
    "full_cache_seconds": "full cache est. s",
    "kept": "on to all data",
    "reason": "why",
    "best_on_all_data": "best on all data",
}


def screening_rows(study: Any, storage_url: str, study_name: str) -> list[dict[str, Any]]:
    """One record per screened backbone, in the decision's ranking (``[]`` when the study did not screen)."""
    from autotl.run.stages import read_all

    stored = read_all(storage_url, study_name)
    decision = stored.get(DECISION_KEY)
    if decision is None:
        return []
    best: dict[str, float] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "COMPLETE" and t.values and len(t.values) == 1:
            b = str(t.params.get("backbone"))
            best[b] = max(best.get(b, -math.inf), float(t.values[0]))
    z = float(decision.get("z", _z(0.95)))
    failed = [n for n in decision["reasons"] if n not in decision["ranking"]]
    rows = []
    for name in [*decision["ranking"], *failed]:
        # a backbone dropped at the pilot has its pilot's scores only
        r = stored.get(RESULT_KEY + name) or stored.get(PILOT_KEY + name, {})
        lo, hi = _interval(r, z) if "accuracy" in r else (None, None)
        rows.append(
            {
                "backbone": name,
                "sample_images": sample_images(r) if "accuracy" in r else None,
                "sample_accuracy": r.get("accuracy"),
                "accuracy_low": lo,
                "accuracy_high": hi,
                "logme": r.get("logme"),
                "images_per_second": r.get("images_per_second"),
                "full_cache_seconds": decision.get("estimates", {}).get(name),
                "kept": name in decision["kept"],
                "reason": decision["reasons"].get(name, ""),
                "best_on_all_data": best.get(name),
            }
        )
    return rows
