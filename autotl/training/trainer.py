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
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from autotl.scoring.metrics import balanced_class_weights, classification_scores
from autotl.training.fitting import (
    MIN_DELTA,
    Pixels,
    Report,
    Rows,
    Schedule,
    copy_head,
    fit_head,
    head_probabilities,
    train_head_through,
    trainer,
)
from autotl.training.params import LR_RATIO, TrialParams
from autotl.training.seeding import set_random_seed

if TYPE_CHECKING:
    from autotl.data.dataset import Dataset
    from autotl.spec import BackboneSpec

__all__ = ["TrialParams", "TrialResult", "Gate", "train_trial", "LR_RATIO"]


class Gate(str, Enum):
    """The gate's verdict: whether phase 2 ran, and if not, which rule kept it shut (the reason says more)."""

    PASSED = "passed"
    NOT_ASKED = "not_asked"  # the trial asked for no fine-tuning (unfreeze_blocks 0, or a two-stage search's phase-1 trial)
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


@dataclass
class _Trial:
    """What both phases of one trial share: the backbone and its settings, the data, the cache, and
    where the trial reports, says what it does and records its times and cache entries."""

    spec: BackboneSpec
    params: TrialParams
    base: Callable[[], Any]  # the frozen base, built on first call
    dataset: Dataset
    cache: Any
    weights: Any
    report: Optional[Report]
    say: Callable[[str], None]
    augmentation: Any
    seconds: dict[str, float] = field(default_factory=dict)
    cache_info: dict[str, Any] = field(default_factory=dict)

    def schedule(self, phase2: bool, class_weight: Optional[np.ndarray]) -> Schedule:
        """A phase's training settings; phase 2's epochs continue phase 1's on the report's axis."""
        p = self.params
        return Schedule(
            lr=p.finetune_lr if phase2 else p.phase1_lr,
            epochs=p.phase2_epochs if phase2 else p.phase1_epochs,
            patience=p.phase2_patience if phase2 else p.phase1_patience,
            batch_size=p.batch_size,
            dropout=p.dropout,
            seed=p.seed,
            offset=p.phase1_epochs if phase2 else 0,
            report=self.report,
            class_weight=class_weight,
        )


@dataclass
class _Phase2:
    """What fine-tuning leaves behind: its history, how many layers trained, whether it was kept, the
    trial's best validation loss and accuracy, and (when kept) the validation probabilities."""

    history: dict[str, list[float]]
    unfrozen: int
    kept: bool
    best_loss: float
    best_acc: float
    probs: Optional[np.ndarray]


def train_trial(
    spec: BackboneSpec,
    params: TrialParams,
    make_base: Callable[[], Any],
    dataset: Dataset,
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

    set_random_seed(params.seed)
    trial = _Trial(
        spec=spec,
        params=params,
        base=functools.cache(make_base),
        dataset=dataset,
        cache=cache,
        weights=weights,
        report=report,
        say=progress or (lambda _msg: None),
        augmentation=augmentation,
    )
    p1 = _phase1(trial)
    gate, reason, boundaries = _gate(spec, params, p1, trial.base)
    cut: Optional[str] = None
    p2 = None
    if gate is Gate.PASSED:
        if not params.unfreeze_all:
            cut = boundaries[-min(params.unfreeze_blocks, len(boundaries))]
        p2 = _phase2(trial, p1, cut)
    return _result(trial, p1, (gate, reason), cut, p2)


def _result(
    trial: _Trial,
    p1: _Phase1,
    verdict: tuple[Gate, str],
    cut: Optional[str],
    p2: Optional[_Phase2],
) -> TrialResult:
    """The trial's result: the better phase's scores, both histories, and how to rebuild what it trained."""
    from autotl.training.model import assemble, top_layer_weights

    kept = p2 is not None and p2.kept
    base, spec = trial.base, trial.spec

    def trained_weights() -> dict[str, list[np.ndarray]]:
        """Layer name to weights, for every layer this trial changed: the head, and the top if phase 2 was kept."""
        out = {layer.name: layer.get_weights() for layer in p1.head}
        if kept:
            out.update(top_layer_weights(base(), cut))
        return out

    probs = p2.probs if p2 is not None else None
    if probs is None:  # phase 2 not run or not kept: the phase-1 head, at its restored epoch
        probs = head_probabilities(p1.head, p1.val[0])
    return TrialResult(
        val_accuracy=p2.best_acc if p2 is not None else p1.best_acc,
        val_loss=p2.best_loss if p2 is not None else p1.best_loss,
        history={"phase1": p1.history, "phase2": p2.history if p2 is not None else {}},
        head_stable_epoch=p1.best_epoch if p1.plateaued else None,
        gate=verdict[0],
        gate_reason=verdict[1],
        phase2_kept=kept,
        cut=cut,
        unfrozen_layers=p2.unfrozen if p2 is not None else 0,
        seconds=trial.seconds,
        cache=trial.cache_info,
        build_model=lambda: assemble(spec, base(), p1.head),
        trained_weights=trained_weights,
        val_scores=classification_scores(probs, p1.val[1]),
    )


def _phase1(trial: _Trial) -> _Phase1:
    """Feature extraction: the head trains on the frozen base's cached pooled features.

    The same forward pass stores the block boundaries that fine-tuning trials
    may later start from (``params.prefetch_blocks``), so the data crosses the base once.
    """
    from autotl.training.model import build_head

    spec, params, say = trial.spec, trial.params, trial.say
    say("phase 1: features")
    feats = trial.cache.get(
        spec,
        trial.base,
        trial.weights,
        trial.dataset,
        None,
        batch_size=params.batch_size,
        augmentation=trial.augmentation,
        seed=params.seed,
        prefetch=lambda b: prefetch_cuts(spec, params, b),
        say=lambda msg: say(f"phase 1: {msg}"),
    )
    trial.cache_info["phase1"] = _cache_record(feats)
    start = time.perf_counter()
    # seeded again here: whether the base was just built (drawing from the same generators) or came
    # from a cache or an earlier trial, the head starts from the same weights for the same seed
    set_random_seed(params.seed)
    n_classes = len(trial.dataset.class_names)
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
        (feats.train, feats.train_labels),
        (feats.val, feats.val_labels),
        trial.schedule(phase2=False, class_weight=class_weight),
    )
    trial.seconds["phase1"] = time.perf_counter() - start
    best_epoch, best_loss, best_acc = _best(h1)
    plateaued = len(h1["val_loss"]) - 1 - best_epoch >= params.phase1_patience
    return _Phase1(
        head=head,
        history=h1,
        best_epoch=best_epoch,
        best_loss=best_loss,
        best_acc=best_acc,
        plateaued=plateaued,
        val=(feats.val, np.asarray(feats.val_labels)),
        class_weight=class_weight,
    )


def prefetch_cuts(spec: BackboneSpec, params: TrialParams, base: Any) -> list[str]:
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
    spec: BackboneSpec, params: TrialParams, p1: _Phase1, base: Callable[[], Any]
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


def _phase2(trial: _Trial, p1: _Phase1, cut: Optional[str]) -> _Phase2:
    """Fine-tuning: the top blocks above ``cut`` (the whole base for ``None``) train with the head at the low rate.

    BatchNormalization stays frozen.  If fine-tuning does not beat the phase-1
    head, the head and the pretrained top are put back.
    """
    from autotl.training.model import freeze_below, top_layer_weights

    base = trial.base
    trial.say(f"phase 2: features at {cut or 'input'}")
    inputs = _phase2_inputs(trial, cut)
    start = time.perf_counter()
    snapshot = top_layer_weights(base(), cut)  # what fine-tuning may change, to undo it
    unfrozen = freeze_below(base(), cut)
    model = _fine_tuning_model(trial, cut, inputs)
    trial.say("phase 2: fine-tuning")
    h2 = train_head_through(
        model, p1.head, inputs.train, inputs.val, trial.schedule(True, p1.class_weight)
    )
    trial.seconds["phase2"] = time.perf_counter() - start
    _, loss2, acc2 = _best(h2) if h2 else (0, math.inf, 0.0)
    kept = loss2 < p1.best_loss
    probs = None
    if kept:
        probs = _probabilities(model, inputs.val)
        copy_head(model, None, p1.head)
    else:  # fine-tuning made things worse: keep the phase-1 head (untouched) and go back to the pretrained top
        for name, ws in snapshot.items():
            base().get_layer(name).set_weights(ws)
        loss2, acc2 = p1.best_loss, p1.best_acc
    base().trainable = False
    return _Phase2(h2, unfrozen, kept, loss2, acc2, probs)


@dataclass
class _Inputs:
    """Phase 2's input: its shape, the frozen part below the cut as a function, and the two splits."""

    shape: tuple[int, ...]
    features: Callable[[Any], Any]
    train: Any  # Rows (cached activations) or Pixels (images)
    val: Any


def _phase2_inputs(trial: _Trial, cut: Optional[str]) -> _Inputs:
    """The boundary's cached activations, or, with the whole base unfrozen or the boundary not
    cached, the images, batch by batch."""
    from autotl.backbones.preprocess import apply_preprocessing
    from autotl.training.model import submodel

    spec, params, base, dataset = trial.spec, trial.params, trial.base, trial.dataset
    acts = None
    if cut:
        acts = trial.cache.get(
            spec,
            base,
            trial.weights,
            dataset,
            cut,
            batch_size=params.batch_size,
            augmentation=trial.augmentation,
            seed=params.seed,
            say=lambda msg: trial.say(f"phase 2: {msg}"),
            required=False,
        )
    if acts is not None:
        trial.cache_info["phase2"] = _cache_record(acts, cut=cut)
        return _Inputs(
            tuple(acts.train.shape[1:]),
            lambda x: submodel(base(), cut, None)(x, training=False),
            Rows(acts.train, acts.train_labels),
            Rows(acts.val, acts.val_labels),
        )
    if cut is not None:
        trial.cache_info["phase2"] = {"streamed": True, "cut": cut}
    return _Inputs(
        (*spec.input_size, 3),
        lambda x: base()(apply_preprocessing(spec.preprocessing, x), training=False),
        Pixels(dataset.train, spec.input_size),
        Pixels(dataset.val, spec.input_size),
    )


def _fine_tuning_model(trial: _Trial, cut: Optional[str], inputs: _Inputs) -> Any:
    """The compiled model that trains the top above ``cut`` with a head (one per shape and process)."""
    import keras

    base = trial.base

    def body() -> tuple[Any, Any]:
        x_in = keras.Input(inputs.shape)
        return x_in, keras.layers.GlobalAveragePooling2D()(inputs.features(x_in))

    width, n_classes = trial.params.head_width, len(trial.dataset.class_names)
    # the base object is one per backbone and process, so its id names the layers this model trains
    key = ("top", id(base()), cut, tuple(inputs.shape), width, n_classes)
    return trainer(key, body, width, n_classes, owner=base())


def _probabilities(model: Any, val: Any) -> np.ndarray:
    """The validation probabilities of the restored epoch, batch by batch from the cache's rows or the
    images (the split is never one array); eager calls: Keras' predict would trace a function per trial
    and batch shape, and keep it."""
    return np.concatenate(
        [
            np.asarray(model(x, training=False), np.float64)
            for x, _ in val.batches(np.arange(len(val)), 256)
        ]
    )
