"""Keras fits for the two-phase trainer: early stopping, one step axis, compiled models reused.

Tracing a new Keras model's training and evaluation functions costs more than
training a head on cached features for a dozen epochs, and TensorFlow keeps
some memory for every model it has traced.  Trials differ in initial
weights, dropout rate and learning rate, not in shape; so each shape gets one
compiled training model per process, whose dropout rate is a variable and
whose weights and optimizer are reset for every trial.  These models only
train: their head weights are copied into the trial's own head (built-in
Dropout and Dense layers), which is what gets saved.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence

import numpy as np

from autotl.errors import TrialFailed

__all__ = ["MIN_DELTA", "Report", "fit", "trainer", "train_head_through", "copy_head"]

Report = Callable[[int, float], None]
MIN_DELTA = 1e-3  # a validation-loss change smaller than this is not an improvement
MAX_TRAINERS = 16  # compiled models kept per process (least recently used dropped)
_TRAINERS: "OrderedDict[tuple, Any]" = OrderedDict()


def _reporter(report: Optional[Report], offset: int) -> Any:
    """A callback forwarding validation accuracy on one step axis across both phases, and stopping divergence."""
    import keras

    class Forward(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            logs = logs or {}
            if not all(math.isfinite(float(v)) for v in logs.values()):
                raise TrialFailed(f"training diverged at epoch {epoch + 1} (loss {logs.get('loss')}); lower the learning rate")
            if report is not None:
                report(offset + epoch, float(logs["val_accuracy"]))

    return Forward()


def fit(model: Any, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], epochs: int, patience: int,
        batch_size: int, report: Optional[Report], offset: int, seed: int = 0) -> dict[str, list[float]]:
    """``model.fit`` with early stopping on validation loss, best weights restored."""
    import keras
    import tensorflow as tf

    # "Stopped improving" means by less than MIN_DELTA: on separable data the loss creeps towards 0 forever.
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, min_delta=MIN_DELTA, restore_best_weights=True)
    # tf.data once, rather than numpy arrays re-wrapped every epoch: per-epoch overhead is most of a cached trial.
    train_ds = tf.data.Dataset.from_tensor_slices(train).shuffle(len(train[1]), seed=seed, reshuffle_each_iteration=True).batch(batch_size).prefetch(2)
    val_ds = tf.data.Dataset.from_tensor_slices(val).batch(max(batch_size, 256)).cache()
    hist = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False, callbacks=[stop, _reporter(report, offset)])
    return {k: [float(v) for v in vs] for k, vs in hist.history.items()}


def trainer(key: tuple, body: Callable[[], tuple[Any, Any]], width: int, n_classes: int, owner: Any = None) -> Any:
    """The compiled training model for ``key``: ``body()`` gives (input, features), a head goes on top.

    ``owner`` (the base whose layers the model trains, named in ``key`` by its
    ``id``) is kept alive with the model, so that id cannot be reused by
    another base while the model is cached.
    """
    import keras

    if key in _TRAINERS:
        _TRAINERS.move_to_end(key)
        return _TRAINERS[key][0]

    class RateDropout(keras.layers.Layer):
        """Dropout whose rate is a variable, so one compiled model serves every rate."""

        def build(self, input_shape: Any) -> None:
            self.rate = self.add_weight(shape=(), initializer="zeros", trainable=False, name="rate")
            self.seed = keras.random.SeedGenerator(0)

        def call(self, x: Any, training: bool = False) -> Any:
            if not training:
                return x
            keep = keras.ops.cast(keras.random.uniform(keras.ops.shape(x), seed=self.seed) >= self.rate, x.dtype)
            return x * keep / (1.0 - self.rate)

    inp, x = body()
    x = RateDropout(name="head_dropout")(x)
    x = keras.layers.Dense(width, activation="relu", name="head_dense")(x)
    model = keras.Model(inp, keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x))
    # no XLA: on cached features a trial is seconds long and compiling would dominate it
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=False)
    _TRAINERS[key] = (model, owner)
    while len(_TRAINERS) > MAX_TRAINERS:
        _TRAINERS.popitem(last=False)
    return model


def copy_head(src: Any, dst: Any, head: Sequence[Any]) -> None:
    """Copy the weights of ``head``'s Dense layers from model ``src`` (or the layers) to ``dst``."""
    for layer in head[1:]:
        s = src.get_layer(layer.name) if src is not None else layer
        d = dst.get_layer(layer.name) if dst is not None else layer
        d.set_weights(s.get_weights())


def train_head_through(model: Any, head: Sequence[Any], dropout: float, lr: float, train: tuple[np.ndarray, np.ndarray],
                       val: tuple[np.ndarray, np.ndarray], epochs: int, patience: int, batch_size: int,
                       report: Optional[Report], offset: int, seed: int) -> dict[str, list[float]]:
    """Train ``model`` from ``head``'s current weights, a fresh Adam at ``lr`` and dropout ``dropout``."""
    for layer in head[1:]:
        if not layer.built:
            layer.build((None, model.get_layer(layer.name).input.shape[-1]))
    copy_head(None, model, head)
    model.get_layer("head_dropout").rate.assign(dropout)
    for var in model.optimizer.variables:  # a fresh Adam: no moments, step 0
        var.assign(np.zeros(var.shape, dtype=var.dtype))
    model.optimizer.learning_rate = lr
    return fit(model, train, val, epochs, patience, batch_size, report, offset, seed)
