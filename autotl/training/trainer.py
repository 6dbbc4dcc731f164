"""The two-phase transfer-learning trainer, with its rules enforced in code.

Phase 1 (feature extraction) always comes first: the base is frozen and the
new head is trained at about 1e-3 until its validation loss stops improving.
Phase 2 (fine-tuning) runs only once the head has stabilised -- its validation
loss stopped improving for ``patience`` epochs *and* its training loss is under
the threshold -- and then unfreezes only the top blocks, keeps BatchNormalization
in inference mode and trains at a rate at least 10 times lower.

Both phases train on the frozen-feature cache: phase 1 on the base's pooled
output, phase 2 from the block boundary below the unfrozen top.  The trainer
takes plain parameters and a ``report(step, value)`` callback; it never imports
Optuna, so it can be driven by any search engine (or none).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Optional

import numpy as np

from autotl.scoring.metrics import balanced_class_weights, classification_scores
from autotl.training.fitting import (
    MIN_DELTA,
    Pixels,
    Report,
    Rows,
    copy_head,
    fit_head,
    head_probabilities,
    train_head_through,
    trainer,
)
from autotl.training.params import LR_RATIO, TrialParams
from autotl.training.seeding import set_random_seed

__all__ = ["TrialParams", "TrialResult", "Gate", "train_trial", "LR_RATIO"]


class Gate(str, Enum):
    """The gate's verdict: whether phase 2 ran, and if not, which rule kept it shut (the reason says more)."""

    PASSED = "passed"
    NOT_ASKED = (
        "not_asked"  # the trial asked for no fine-tuning (unfreeze_blocks 0, or a screening trial)
    )
    STILL_IMPROVING = "still_improving"  # the head's validation loss had not stopped improving
    HEAD_LOSS_HIGH = "head_loss_high"  # the head's training loss was not under the threshold
    NO_BOUNDARIES = "no_boundaries"  # the backbone declares no block boundary to unfreeze from


@dataclass
class TrialResult:
    val_accuracy: float
    val_loss: float
    history: dict[str, dict[str, list[float]]]
    head_stable_epoch: Optional[
        int
    ]  # 0-based epoch of the head's best validation loss, if it stabilised
    gate: Gate  # passed, or the rule that kept phase 2 from running
    gate_reason: str  # the verdict in words, with the numbers
    phase2_kept: bool  # phase 2 ran and improved on phase 1
    cut: Optional[str]
    unfrozen_layers: int
    seconds: dict[str, float] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    build_model: Callable[[], Any] = field(default=lambda: None, repr=False)
    trained_weights: Callable[[], dict[str, list[np.ndarray]]] = field(default=dict, repr=False)
    # scores of the final validation probabilities (the restored epoch; a kept phase 2's)
    val_scores: dict[str, float] = field(default_factory=dict)

    def attrs(self) -> dict[str, Any]:
        """Everything but the model and its weights, JSON-able, for the study's trial attributes."""
        out = asdict(self)
        out.pop("build_model")
        out.pop("trained_weights")
        out.pop("val_scores")
        out["gate"] = self.gate.value
        out["metrics"] = {
            "val_accuracy": self.val_accuracy,
            "val_loss": self.val_loss,
            **{f"val_{k}": v for k, v in self.val_scores.items() if k in VAL_SCORES},
        }
        return out


#: The scores of the final validation probabilities a trial records beside its accuracy and loss
#: (as ``val_<name>``); accuracy and log loss are the history's ``val_accuracy`` and ``val_loss``.
VAL_SCORES = ("balanced_accuracy", "macro_f1")


def _best(history: dict[str, list[float]]) -> tuple[int, float, float]:
    """The epoch early stopping restored: the first whose loss later epochs never beat by MIN_DELTA."""
    losses = history["val_loss"]
    i = 0
    for j, loss in enumerate(losses):
        if loss < losses[i] - MIN_DELTA:
            i = j
    return i, losses[i], history["val_accuracy"][i]


@dataclass
class _Phase1:
    """What phase 1 leaves behind: the head (trained, best epoch restored) and where it stopped."""

    head: list[Any]
    history: dict[str, list[float]]
    best_epoch: int
    best_loss: float
    best_acc: float
    plateaued: bool
    val: tuple[Any, np.ndarray]  # the validation features and labels the head was scored on
    class_weight: Optional[np.ndarray]  # per class, when the space asks for balanced weights


def train_trial(
    spec: Any,
    params: TrialParams,
    make_base: Callable[[], Any],
    dataset: Any,
    cache: Any,
    weights: Any,
    report: Optional[Report] = None,
    progress: Optional[Callable[[str], None]] = None,
    augmentation: Any = None,
) -> TrialResult:
    """Train one trial's head (phase 1) and, if the gate opens, its top blocks (phase 2).

    ``make_base()`` builds the frozen base; it is called only when the cache
    misses, when phase 2 runs, or when ``result.build_model()`` assembles the
    full model, so a phase-1-only trial on a warm cache never builds it.
    """
    import functools

    from autotl.training.model import assemble, top_layer_weights

    say = progress or (lambda _msg: None)
    set_random_seed(params.seed)
    base = functools.cache(make_base)
    seconds: dict[str, float] = {}
    cache_info: dict[str, Any] = {}
    p1 = _phase1(
        spec, params, base, dataset, cache, weights, report, say, augmentation, seconds, cache_info
    )
    gate, reason, boundaries = _gate(spec, params, p1, base)
    history = {"phase1": p1.history, "phase2": {}}
    best_loss, best_acc = p1.best_loss, p1.best_acc
    cut: Optional[str] = None
    unfrozen, kept, probs = 0, False, None
    if gate is Gate.PASSED:
        cut = (
            None
            if params.unfreeze_all
            else boundaries[-min(params.unfreeze_blocks, len(boundaries))]
        )
        h2, unfrozen, kept, best_loss, best_acc, probs = _phase2(
            spec,
            params,
            base,
            dataset,
            cache,
            weights,
            report,
            say,
            augmentation,
            p1,
            cut,
            seconds,
            cache_info,
        )
        history["phase2"] = h2

    def trained_weights() -> dict[str, list[np.ndarray]]:
        """Layer name to weights, for every layer this trial changed: the head, and the top if phase 2 was kept."""
        out = {layer.name: layer.get_weights() for layer in p1.head}
        if kept:
            out.update(top_layer_weights(base(), cut))
        return out

    stable_epoch = p1.best_epoch if p1.plateaued else None
    if probs is None:  # phase 2 not run or not kept: the phase-1 head, at its restored epoch
        probs = head_probabilities(p1.head, p1.val[0])
    scores = classification_scores(probs, p1.val[1])
    return TrialResult(
        best_acc,
        best_loss,
        history,
        stable_epoch,
        gate,
        reason,
        kept,
        cut,
        unfrozen,
        seconds,
        cache_info,
        lambda: assemble(spec, base(), p1.head),
        trained_weights,
        scores,
    )


def _phase1(
    spec: Any,
    params: TrialParams,
    base: Callable[[], Any],
    dataset: Any,
    cache: Any,
    weights: Any,
    report: Optional[Report],
    say: Callable[[str], None],
    augmentation: Any,
    seconds: dict[str, float],
    cache_info: dict[str, Any],
) -> _Phase1:
    """Feature extraction: the head trains on the frozen base's cached pooled features.

    The same forward pass stores the block boundaries that fine-tuning trials
    may later start from (``params.prefetch_blocks``), so the data crosses the base once.
    """
    from autotl.training.model import build_head

    say("phase 1: features")
    feats = cache.get(
        spec,
        base,
        weights,
        dataset,
        None,
        batch_size=params.batch_size,
        augmentation=augmentation,
        seed=params.seed,
        prefetch=lambda b: prefetch_cuts(spec, params, b),
        say=lambda msg: say(f"phase 1: {msg}"),
    )
    cache_info["phase1"] = _cache_record(feats)
    start = time.perf_counter()
    # seeded again here: whether the base was just built (drawing from the same generators) or came
    # from a cache or an earlier trial, the head starts from the same weights for the same seed
    set_random_seed(params.seed)
    n_classes = len(dataset.class_names)
    head = build_head(n_classes, params.head_width, params.dropout)
    class_weight = (
        balanced_class_weights(feats.train_labels, n_classes)
        if params.class_weight == "balanced"
        else None
    )
    say("phase 1: head")
    for layer in head[1:]:  # glorot-initialised from the trial's seed
        layer.build((None, feats.train.shape[1] if layer is head[1] else params.head_width))
    h1 = fit_head(
        head,
        params.dropout,
        params.phase1_lr,
        (feats.train, feats.train_labels),
        (feats.val, feats.val_labels),
        params.phase1_epochs,
        params.phase1_patience,
        params.batch_size,
        report,
        0,
        params.seed,
        class_weight,
    )
    seconds["phase1"] = time.perf_counter() - start
    best_epoch, best_loss, best_acc = _best(h1)
    plateaued = len(h1["val_loss"]) - 1 - best_epoch >= params.phase1_patience
    val = (feats.val, np.asarray(feats.val_labels))
    return _Phase1(head, h1, best_epoch, best_loss, best_acc, plateaued, val, class_weight)


def prefetch_cuts(spec: Any, params: TrialParams, base: Any) -> list[str]:
    """The block boundaries fine-tuning may start from in this space: cached in phase 1's forward pass."""
    from autotl.training.model import block_boundaries

    if not params.prefetch_blocks:
        return []
    boundaries = block_boundaries(base, spec.block_pattern)
    top = len(boundaries) - max(params.prefetch_min_blocks, 1) + 1
    return boundaries[max(len(boundaries) - params.prefetch_blocks, 0) : max(top, 0)]


def _cache_record(feats: Any, **more: Any) -> dict[str, Any]:
    """What a trial records of a cache entry it used: its key, whether it was built now, and the build's figures."""
    record = {"key": feats.key, "built": feats.built, "seconds": round(feats.seconds, 3), **more}
    if feats.stats:
        record["build"] = feats.stats  # when the entry was built, by this trial or an earlier one
    return record


def _gate(
    spec: Any, params: TrialParams, p1: _Phase1, base: Callable[[], Any]
) -> tuple[Gate, str, list[str]]:
    """Whether phase 2 may run: the head stabilised (plateau, and training loss under the threshold).

    Returns the verdict, its reason in words, and the base's block boundaries
    (only looked up, which builds the base, when everything else passed).
    """
    from autotl.training.model import block_boundaries

    head_loss = p1.history["loss"][p1.best_epoch]
    if params.unfreeze_blocks <= 0 and not params.unfreeze_all:
        return Gate.NOT_ASKED, "not asked: unfreeze_blocks is 0", []
    if not p1.plateaued:
        return (
            Gate.STILL_IMPROVING,
            f"head still improving after {len(p1.history['val_loss'])} epochs (phase1.epochs); "
            "raise it to let the head stabilise",
            [],
        )
    if head_loss >= params.head_loss_threshold:
        return (
            Gate.HEAD_LOSS_HIGH,
            f"head training loss {head_loss:.3f} is not under the threshold {params.head_loss_threshold:g}",
            [],
        )
    boundaries = block_boundaries(base(), spec.block_pattern)
    if not boundaries and not params.unfreeze_all:
        return (
            Gate.NO_BOUNDARIES,
            f"backbone {spec.name} declares no block boundaries to unfreeze from",
            [],
        )
    return Gate.PASSED, "passed", boundaries


def _phase2(
    spec: Any,
    params: TrialParams,
    base: Callable[[], Any],
    dataset: Any,
    cache: Any,
    weights: Any,
    report: Optional[Report],
    say: Callable[[str], None],
    augmentation: Any,
    p1: _Phase1,
    cut: Optional[str],
    seconds: dict[str, float],
    cache_info: dict[str, Any],
) -> tuple[dict[str, list[float]], int, bool, float, float, Optional[np.ndarray]]:
    """Fine-tuning: the top blocks above ``cut`` (the whole base for ``None``) train with the head at the low rate.

    BatchNormalization stays frozen.  If fine-tuning does not beat the phase-1
    head, the head and the pretrained top are put back.  Returns the history,
    how many weight layers trained, whether phase 2 was kept, the best
    validation loss and accuracy of the trial, and (when kept) the validation
    probabilities of the restored epoch.
    """
    import keras

    from autotl.backbones.preprocess import apply_preprocessing
    from autotl.training.model import freeze_below, submodel, top_layer_weights

    say(f"phase 2: features at {cut or 'input'}")
    acts = (
        cache.get(
            spec,
            base,
            weights,
            dataset,
            cut,
            batch_size=params.batch_size,
            augmentation=augmentation,
            seed=params.seed,
            say=lambda msg: say(f"phase 2: {msg}"),
            required=False,
        )
        if cut
        else None
    )
    if acts is not None:
        cache_info["phase2"] = _cache_record(acts, cut=cut)
    start = time.perf_counter()
    snapshot = top_layer_weights(base(), cut)  # what fine-tuning may change, to undo it
    unfrozen = freeze_below(base(), cut)
    if acts is not None:
        shape = tuple(acts.train.shape[1:])

        def features(x: Any) -> Any:
            return submodel(base(), cut, None)(x, training=False)

        train_xy, val_xy = Rows(acts.train, acts.train_labels), Rows(acts.val, acts.val_labels)
    else:  # the whole base unfrozen, or its boundary not cached: train from pixels, batch by batch
        shape = (*spec.input_size, 3)
        if cut is not None:
            cache_info["phase2"] = {"streamed": True, "cut": cut}

        def features(x: Any) -> Any:
            return base()(apply_preprocessing(spec.preprocessing, x), training=False)

        train_xy = Pixels(dataset.train, spec.input_size)
        val_xy = Pixels(dataset.val, spec.input_size)

    def body() -> tuple[Any, Any]:
        x_in = keras.Input(shape)
        return x_in, keras.layers.GlobalAveragePooling2D()(features(x_in))

    n_classes = len(dataset.class_names)
    # the base object is one per backbone and process, so its id names the layers this model trains
    model = trainer(
        ("top", id(base()), cut, tuple(shape), params.head_width, n_classes),
        body,
        params.head_width,
        n_classes,
        owner=base(),
    )
    say("phase 2: fine-tuning")
    h2 = train_head_through(
        model,
        p1.head,
        params.dropout,
        params.finetune_lr,
        train_xy,
        val_xy,
        params.phase2_epochs,
        params.phase2_patience,
        params.batch_size,
        report,
        params.phase1_epochs,
        params.seed,
        p1.class_weight,
    )
    seconds["phase2"] = time.perf_counter() - start
    _, loss2, acc2 = _best(h2) if h2 else (0, math.inf, 0.0)
    kept = loss2 < p1.best_loss
    probs = None
    if kept:
        # eager calls: Keras' predict would trace a function per trial and batch shape, and keep it
        # batch by batch from the cache's rows or the images: the split is never one array
        probs = np.concatenate(
            [
                np.asarray(model(x, training=False), np.float64)
                for x, _ in val_xy.batches(np.arange(len(val_xy)), 256)
            ]
        )
        copy_head(model, None, p1.head)
    else:  # fine-tuning made things worse: keep the phase-1 head (untouched) and go back to the pretrained top
        for name, ws in snapshot.items():
            base().get_layer(name).set_weights(ws)
    base().trainable = False
    if not kept:
        loss2, acc2 = p1.best_loss, p1.best_acc
    return h2, unfrozen, kept, loss2, acc2, probs
