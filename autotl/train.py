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

from autotl.errors import TrialFailed
from autotl.space import LR_RATIO

__all__ = ["TrialParams", "TrialResult", "train_trial"]

Report = Callable[[int, float], None]
MIN_DELTA = 1e-3  # a validation-loss change smaller than this is not an improvement


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


class _Reporter:
    """A Keras callback forwarding validation accuracy on one step axis across both phases."""

    def __new__(cls, report: Optional[Report], offset: int) -> Any:
        import keras

        class Forward(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
                logs = logs or {}
                if not all(math.isfinite(float(v)) for v in logs.values()):
                    raise TrialFailed(f"training diverged at epoch {epoch + 1} (loss {logs.get('loss')}); lower the learning rate")
                if report is not None:
                    report(offset + epoch, float(logs["val_accuracy"]))

        return Forward()


def _fit(model: Any, lr: float, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], epochs: int, patience: int, batch_size: int, report: Optional[Report], offset: int, seed: int = 0, compile: bool = True) -> dict[str, list[float]]:
    import keras
    import tensorflow as tf

    if compile:  # no XLA: on cached features a trial is seconds long and compiling would dominate it
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=False)
    # "Stopped improving" means by less than MIN_DELTA: on separable data the loss creeps towards 0 forever.
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, min_delta=MIN_DELTA, restore_best_weights=True)
    # tf.data once, rather than numpy arrays re-wrapped every epoch: per-epoch overhead is most of a cached trial.
    train_ds = tf.data.Dataset.from_tensor_slices(train).shuffle(len(train[1]), seed=seed, reshuffle_each_iteration=True).batch(batch_size).prefetch(2)
    val_ds = tf.data.Dataset.from_tensor_slices(val).batch(max(batch_size, 256)).cache()
    hist = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False, callbacks=[stop, _Reporter(report, offset)])
    return {k: [float(v) for v in vs] for k, vs in hist.history.items()}


_HEAD_MODELS: dict[tuple[int, int, int, int], Any] = {}


def _head_model(in_dim: int, width: int, n_classes: int, batch_size: int) -> Any:
    """One compiled phase-1 model per shape, reused by every trial of that shape in this process.

    Tracing a new model's training and evaluation functions costs more than
    training a head on cached features for a dozen epochs.  Trials of one
    shape differ only in initial weights, dropout rate and learning rate, so
    the rate is a variable here and the rest is reset per trial.  This model
    only trains: its weights are copied into the trial's own head (built-in
    Dropout and Dense layers), which is what the saved model holds.
    """
    import keras

    key = (in_dim, width, n_classes, batch_size)
    if key not in _HEAD_MODELS:

        class RateDropout(keras.layers.Layer):
            def build(self, input_shape: Any) -> None:
                self.rate = self.add_weight(shape=(), initializer="zeros", trainable=False, name="rate")
                self.seed = keras.random.SeedGenerator(0)

            def call(self, x: Any, training: bool = False) -> Any:
                if not training:
                    return x
                keep = keras.ops.cast(keras.random.uniform(keras.ops.shape(x), seed=self.seed) >= self.rate, x.dtype)
                return x * keep / (1.0 - self.rate)

        inp = keras.Input((in_dim,))
        x = RateDropout(name="head_dropout")(inp)
        x = keras.layers.Dense(width, activation="relu", name="head_dense")(x)
        model = keras.Model(inp, keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=False)
        _HEAD_MODELS[key] = model
    return _HEAD_MODELS[key]


def _train_head(head: list[Any], params: TrialParams, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], report: Optional[Report]) -> dict[str, list[float]]:
    """Phase 1: train ``head`` on cached features, through the shared compiled model of its shape."""
    model = _head_model(train[0].shape[1], params.head_width, head[-1].units, params.batch_size)
    for layer in head[1:]:  # the trial's own freshly initialised weights
        layer.build((None, model.get_layer(layer.name).input.shape[-1]))
        model.get_layer(layer.name).set_weights(layer.get_weights())
    model.get_layer("head_dropout").rate.assign(params.dropout)
    for var in model.optimizer.variables:  # a fresh Adam: no moments, step 0
        var.assign(np.zeros(var.shape, dtype=var.dtype))
    model.optimizer.learning_rate = params.phase1_lr
    history = _fit(model, params.phase1_lr, train, val, params.phase1_epochs, params.phase1_patience, params.batch_size, report, 0, params.seed, compile=False)
    for layer in head[1:]:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    return history


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

    from autotl.model import apply_head, assemble, block_boundaries, build_head, freeze_below, submodel, top_layer_weights
    from autotl.preprocess import preprocessing_layer

    say = progress or (lambda _msg: None)
    keras.utils.set_random_seed(params.seed)
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
    if not (np.isfinite(feats.train).all() and np.isfinite(feats.val).all()):
        raise TrialFailed(f"backbone {spec.name} gives non-finite features; check its weights file and preprocessing")
    start = time.perf_counter()
    head = build_head(n_classes, params.head_width, params.dropout)
    say("phase 1: head")
    h1 = _train_head(head, params, (np.asarray(feats.train), feats.train_labels), (np.asarray(feats.val), feats.val_labels), report)
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
        snapshot = [layer.get_weights() for layer in head] + [base().get_weights()]
        unfrozen = freeze_below(base(), cut)
        if acts is not None:
            x_in = keras.Input(acts.train.shape[1:])
            x = submodel(base(), cut, None)(x_in, training=False)
            train_xy, val_xy = (np.asarray(acts.train), acts.train_labels), (np.asarray(acts.val), acts.val_labels)
        else:  # the whole base unfrozen (the space asked): nothing frozen to cache, so train from resized pixels
            x_in = keras.Input((*spec.input_size, 3))
            pre = preprocessing_layer(spec.preprocessing)
            x = base()(pre(x_in) if pre is not None else x_in, training=False)
            pixels = lambda split: (np.concatenate(list(split.batches(spec.input_size, 64))), np.asarray(split.labels))  # noqa: E731
            train_xy, val_xy = pixels(dataset.train), pixels(dataset.val)
        x = keras.layers.GlobalAveragePooling2D()(x)
        ft_model = keras.Model(x_in, apply_head(head, x))
        say("phase 2: fine-tuning")
        h2 = _fit(ft_model, params.finetune_lr, train_xy, val_xy, params.phase2_epochs, params.phase2_patience,
                  params.batch_size, report, params.phase1_epochs, params.seed)
        history["phase2"] = h2
        seconds["phase2"] = time.perf_counter() - start
        _, loss2, acc2 = _best(h2) if h2 else (0, math.inf, 0.0)
        kept = loss2 < best_loss
        if kept:
            best_loss, best_acc = loss2, acc2
        else:  # fine-tuning made things worse: go back to the phase-1 head and base
            for layer, w in zip(head, snapshot[:-1]):
                layer.set_weights(w)
            base().set_weights(snapshot[-1])
        base().trainable = False

    def trained_weights() -> dict[str, list[np.ndarray]]:
        """Layer name to weights, for every layer this trial changed: the head, and the top if phase 2 was kept."""
        out = {layer.name: layer.get_weights() for layer in head}
        if kept:
            out.update(top_layer_weights(base(), cut))
        return out

    return TrialResult(best_acc, best_loss, history, stable_epoch, gate, kept, cut, unfrozen, seconds, cache_info,
                       lambda: assemble(spec, base(), head), trained_weights)
