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
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from autotl.fitting import MIN_DELTA, Report, copy_head, fit_head, train_head_through, trainer
from autotl.seeding import set_random_seed
from autotl.space import LR_RATIO

__all__ = ["TrialParams", "TrialResult", "train_trial"]



@dataclass(frozen=True)
class TrialParams:
    """One trial's settings; the defaults follow the transfer-learning literature."""

    backbone: str
    head_width: int = 128
    dropout: float = 0.2
    unfreeze_blocks: int = 2  # 0: feature extraction only
    unfreeze_all: bool = False
    phase1_lr: float = 1e-3
    finetune_lr: float = 1e-5
    phase1_epochs: int = 100
    phase1_patience: int = 5
    phase2_epochs: int = 20
    phase2_patience: int = 3
    head_loss_threshold: float = 0.5
    batch_size: int = 32
    seed: int = 0
    prefetch_blocks: int = 0  # cache this many top boundaries in phase 1's forward pass

    def __post_init__(self) -> None:
        if self.finetune_lr * LR_RATIO > self.phase1_lr * (1 + 1e-9):
            raise ValueError(f"finetune_lr must be at least {LR_RATIO:g} times below phase1_lr, but got (finetune_lr={self.finetune_lr:g}, phase1_lr={self.phase1_lr:g})")


@dataclass
class TrialResult:
    val_accuracy: float
    val_loss: float
    history: dict[str, dict[str, list[float]]]
    head_stable_epoch: Optional[int]  # 0-based epoch of the head's best validation loss, if it stabilised
    gate: str  # "passed", or why phase 2 did not run
    phase2_kept: bool  # phase 2 ran and improved on phase 1
    cut: Optional[str]
    unfrozen_layers: int
    seconds: dict[str, float] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    build_model: Callable[[], Any] = field(default=lambda: None, repr=False)
    trained_weights: Callable[[], dict[str, list[np.ndarray]]] = field(default=dict, repr=False)

    def attrs(self) -> dict[str, Any]:
        """Everything but the model and its weights, JSON-able, for the study's trial attributes."""
        out = asdict(self)
        out.pop("build_model")
        out.pop("trained_weights")
        return out


def _best(history: dict[str, list[float]]) -> tuple[int, float, float]:
    """The epoch early stopping restored: the first whose loss later epochs never beat by MIN_DELTA."""
    losses = history["val_loss"]
    i = 0
    for j, loss in enumerate(losses):
        if loss < losses[i] - MIN_DELTA:
            i = j
    return i, losses[i], history["val_accuracy"][i]


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

    import keras

    from autotl.model import assemble, block_boundaries, build_head, freeze_below, submodel, top_layer_weights
    from autotl.preprocess import apply_preprocessing

    say = progress or (lambda _msg: None)
    set_random_seed(params.seed)
    n_classes = len(dataset.class_names)
    seconds: dict[str, float] = {}
    cache_info: dict[str, Any] = {}

    base = functools.cache(make_base)
    # Phase 1: the frozen base's pooled features, cached; only the head trains.  The same
    # forward pass stores the boundaries that fine-tuning trials may later start from.
    say("phase 1: features")
    prefetch = (lambda b: block_boundaries(b, spec.block_pattern)[-params.prefetch_blocks :]) if params.prefetch_blocks else (lambda b: ())
    feats = cache.get(spec, base, weights, dataset, None, batch_size=params.batch_size, augmentation=augmentation, seed=params.seed, prefetch=prefetch)
    cache_info["phase1"] = {"key": feats.key, "built": feats.built, "seconds": round(feats.seconds, 3)}
    start = time.perf_counter()
    head = build_head(n_classes, params.head_width, params.dropout)
    say("phase 1: head")
    for layer in head[1:]:  # glorot-initialised from the trial's seed
        layer.build((None, feats.train.shape[1] if layer is head[1] else params.head_width))
    h1 = fit_head(head, params.dropout, params.phase1_lr, (feats.train, feats.train_labels), (feats.val, feats.val_labels),
                  params.phase1_epochs, params.phase1_patience, params.batch_size, report, 0, params.seed)
    seconds["phase1"] = time.perf_counter() - start
    best_epoch, best_loss, best_acc = _best(h1)
    history = {"phase1": h1, "phase2": {}}

    plateaued = len(h1["val_loss"]) - 1 - best_epoch >= params.phase1_patience
    head_loss = h1["loss"][best_epoch]
    stable_epoch = best_epoch if plateaued else None
    if params.unfreeze_blocks <= 0 and not params.unfreeze_all:
        gate = "not asked: unfreeze_blocks is 0"
    elif not plateaued:
        gate = f"head still improving after {len(h1['val_loss'])} epochs (phase1.epochs); raise it to let the head stabilise"
    elif head_loss >= params.head_loss_threshold:
        gate = f"head training loss {head_loss:.3f} is not under the threshold {params.head_loss_threshold:g}"
    else:
        gate = "passed"

    boundaries = block_boundaries(base(), spec.block_pattern) if gate == "passed" else []
    if gate == "passed" and not boundaries and not params.unfreeze_all:
        gate = f"backbone {spec.name} declares no block boundaries to unfreeze from"
    cut: Optional[str] = None
    unfrozen = 0
    kept = False
    if gate == "passed":
        cut = None if params.unfreeze_all else boundaries[-min(params.unfreeze_blocks, len(boundaries))]
        say(f"phase 2: features at {cut or 'input'}")
        acts = cache.get(spec, base, weights, dataset, cut, batch_size=params.batch_size, augmentation=augmentation, seed=params.seed) if cut else None
        if acts is not None:
            cache_info["phase2"] = {"key": acts.key, "built": acts.built, "seconds": round(acts.seconds, 3), "cut": cut}
        start = time.perf_counter()
        snapshot = top_layer_weights(base(), cut)  # what fine-tuning may change, to undo it
        unfrozen = freeze_below(base(), cut)
        if acts is not None:
            shape = acts.train.shape[1:]
            features = lambda x: submodel(base(), cut, None)(x, training=False)  # noqa: E731
            train_xy, val_xy = (np.asarray(acts.train), acts.train_labels), (np.asarray(acts.val), acts.val_labels)
        else:  # the whole base unfrozen (the space asked): nothing frozen to cache, so train from resized pixels
            shape = (*spec.input_size, 3)
            features = lambda x: base()(apply_preprocessing(spec.preprocessing, x), training=False)  # noqa: E731
            pixels = lambda split: (np.concatenate(list(split.batches(spec.input_size, 64))), np.asarray(split.labels))  # noqa: E731
            train_xy, val_xy = pixels(dataset.train), pixels(dataset.val)

        def body() -> tuple[Any, Any]:
            x_in = keras.Input(shape)
            return x_in, keras.layers.GlobalAveragePooling2D()(features(x_in))

        # the base object is one per backbone and process, so its id names the layers this model trains
        model = trainer(("top", id(base()), cut, shape, params.head_width, n_classes), body, params.head_width, n_classes, owner=base())
        say("phase 2: fine-tuning")
        h2 = train_head_through(model, head, params.dropout, params.finetune_lr, train_xy, val_xy, params.phase2_epochs,
                                params.phase2_patience, params.batch_size, report, params.phase1_epochs, params.seed)
        history["phase2"] = h2
        seconds["phase2"] = time.perf_counter() - start
        _, loss2, acc2 = _best(h2) if h2 else (0, math.inf, 0.0)
        kept = loss2 < best_loss
        if kept:
            best_loss, best_acc = loss2, acc2
            copy_head(model, None, head)
        else:  # fine-tuning made things worse: keep the phase-1 head (untouched) and go back to the pretrained top
            for name, ws in snapshot.items():
                base().get_layer(name).set_weights(ws)
        base().trainable = False

    def trained_weights() -> dict[str, list[np.ndarray]]:
        """Layer name to weights, for every layer this trial changed: the head, and the top if phase 2 was kept."""
        out = {layer.name: layer.get_weights() for layer in head}
        if kept:
            out.update(top_layer_weights(base(), cut))
        return out

    return TrialResult(best_acc, best_loss, history, stable_epoch, gate, kept, cut, unfrozen, seconds, cache_info,
                       lambda: assemble(spec, base(), head), trained_weights)
