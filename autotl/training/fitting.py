"""Training on cached activations: the phase-1 head trainer, and Keras fits for phase 2.

Phase 1 trains only the head (Dropout, Dense, Dense) on pooled features, so
its cost is fixed overhead unless that overhead is removed: :func:`fit_head`
runs each epoch as one call of a function traced once per process, whatever
the head width, feature size or class count.  It holds the pooled features in
memory, in the cache's float16: ``images x channels x 2`` bytes (51 MB for
100,000 images of MobileNet 0.25's 256 channels), the one part of a search's
memory that grows with the data.

Phase 2 reads its inputs batch by batch (:class:`Rows` from the cache's files,
:class:`Pixels` from the images when nothing frozen can be cached), through a
``tf.data`` pipeline, so its memory is a few batches whatever the data's size.

Phase 2 trains the unfrozen top blocks plus the head with ``model.fit``.
Tracing a new Keras model's training and evaluation functions costs more than
a few epochs on cached activations, and TensorFlow keeps some memory for
every model it has traced.  Trials differ in initial weights, dropout rate
and learning rate, not in shape; so each shape gets one compiled training
model per process, whose dropout rate is a variable and whose weights and
optimizer are reset for every trial.  These models only train: their head
weights are copied into the trial's own head (built-in Dropout and Dense
layers), which is what gets saved.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from autotl.errors import TrialFailed
from autotl.training.model import HEAD_LAYERS, apply_head, build_head

__all__ = [
    "MIN_DELTA",
    "Report",
    "Schedule",
    "Rows",
    "Pixels",
    "fit",
    "fit_head",
    "trainer",
    "train_head_through",
    "copy_head",
    "head_probabilities",
]

Report = Callable[[int, float], None]
MIN_DELTA = 1e-3  # a validation-loss change smaller than this is not an improvement
MAX_TRAINERS = 16  # compiled models kept per process (least recently used dropped)
_TRAINERS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


@dataclass(frozen=True)
class Schedule:
    """How one phase trains: a fresh Adam at ``lr``, dropout ``dropout``, shuffled batches seeded by
    ``seed``, early stopping after ``patience`` epochs without a better validation loss (by
    ``MIN_DELTA``), at most ``epochs``; ``report(offset + epoch, val_accuracy)`` after each epoch, and
    ``class_weight`` (one weight per class) on the training loss."""

    lr: float
    epochs: int
    patience: int
    batch_size: int = 32
    dropout: float = 0.0
    seed: int = 0
    offset: int = (
        0  # the step of the phase's first epoch on the trial's one axis (phase 2: after phase 1's)
    )
    report: Optional[Report] = None
    class_weight: Optional[Sequence[float] | np.ndarray] = None


def _reporter(report: Optional[Report], offset: int) -> Any:
    """A callback forwarding validation accuracy on one step axis across both phases, and stopping divergence."""
    import keras

    class Forward(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Optional[dict[str, Any]] = None) -> None:
            logs = logs or {}
            if not all(math.isfinite(float(v)) for v in logs.values()):
                raise TrialFailed(
                    f"training diverged at epoch {epoch + 1} (loss {logs.get('loss')}); lower the learning rate"
                )
            if report is not None:
                report(offset + epoch, float(logs["val_accuracy"]))

    return Forward()


class Rows:
    """Cached activations as phase 2's input: rows of a cache file (read in batches) and their labels."""

    def __init__(self, features: Any, labels: np.ndarray) -> None:
        self.features, self.labels = features, np.asarray(labels)
        self.shape = tuple(features.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: np.ndarray, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            yield np.asarray(self.features[idx], np.float32), self.labels[idx]


class Pixels:
    """Images as phase 2's input, decoded and resized batch by batch (the whole base trains, or a boundary is not cached)."""

    def __init__(self, images: Any, size: tuple[int, int]) -> None:
        self.images, self.size = images, tuple(size)
        self.labels = np.asarray(images.labels)
        self.shape = (*self.size, 3)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: np.ndarray, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        starts = range(0, len(order), batch_size)
        for k, x in zip(starts, self.images.batches(self.size, batch_size, order)):
            yield x, self.labels[order[k : k + batch_size]]


Source = Any  # Rows | Pixels


def _pipeline(source: Source, batch_size: int, seed: Optional[int]) -> Any:
    """``tf.data`` over ``source``'s batches: a new seeded order every epoch (``seed`` None: in order)."""
    import itertools

    import tensorflow as tf

    epochs = itertools.count()

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n, epoch = len(source), next(epochs)
        order = (
            np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)
        )
        yield from source.batches(order, batch_size)

    signature = (
        tf.TensorSpec((None, *source.shape), tf.float32),
        tf.TensorSpec((None,), tf.int64),
    )
    # the number of batches, known, so Keras need not run out of data to count them
    steps = -(-len(source) // batch_size)
    pipeline = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return pipeline.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)


def fit(model: Any, train: Source, val: Source, schedule: Schedule) -> dict[str, list[float]]:
    """``model.fit`` with early stopping on validation loss, best weights restored, inputs read
    batch by batch; the schedule's ``class_weight`` weights the training loss, not the validation loss.
    (The model's optimizer and dropout are the caller's: see :func:`train_head_through`.)"""
    import keras

    # "Stopped improving" means by less than MIN_DELTA: on separable data the loss creeps towards 0 forever.
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=schedule.patience,
        min_delta=MIN_DELTA,
        restore_best_weights=True,
    )
    weights = schedule.class_weight
    hist = model.fit(
        _pipeline(train, schedule.batch_size, schedule.seed),
        validation_data=_pipeline(val, max(schedule.batch_size, 64), None),
        epochs=schedule.epochs,
        verbose=0,
        shuffle=False,
        callbacks=[stop, _reporter(schedule.report, schedule.offset)],
        class_weight=None if weights is None else {i: float(w) for i, w in enumerate(weights)},
    )
    return {k: [float(v) for v in vs] for k, vs in hist.history.items()}


def trainer(
    key: tuple[Any, ...],
    body: Callable[[], tuple[Any, Any]],
    width: int,
    n_classes: int,
    owner: Any = None,
) -> Any:
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
        """Dropout whose rate is a variable, so one compiled model serves every rate; its masks restart
        from the trial's seed (:meth:`restart`), so a trial's phase 2 never depends on the trials that
        used this model before it (a refit replays it exactly)."""

        def build(self, input_shape: Any) -> None:
            self.rate = self.add_weight(shape=(), initializer="zeros", trainable=False, name="rate")
            self.seed = keras.random.SeedGenerator(0)

        def restart(self, rate: float, seed: int) -> None:
            self.rate.assign(rate)
            self.seed.state.assign(np.array([seed % 2**31, 0], self.seed.state.dtype))

        def call(self, x: Any, training: bool = False) -> Any:
            if not training:
                return x
            keep = keras.ops.cast(
                keras.random.uniform(keras.ops.shape(x), seed=self.seed) >= self.rate, x.dtype
            )
            return x * keep / (1.0 - self.rate)

    inp, x = body()
    head = build_head(n_classes, width, 0.0, dropout_layer=RateDropout(name=HEAD_LAYERS[0]))
    model = keras.Model(inp, apply_head(head, x))
    # no XLA: on cached features a trial is seconds long and compiling would dominate it
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
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


def train_head_through(
    model: Any, head: Sequence[Any], train: Source, val: Source, schedule: Schedule
) -> dict[str, list[float]]:
    """Train ``model`` from ``head``'s current (built, phase-1) weights, a fresh Adam at the schedule's
    rate and its dropout."""
    copy_head(None, model, head)
    model.get_layer(HEAD_LAYERS[0]).restart(schedule.dropout, schedule.seed)
    for var in model.optimizer.variables:  # a fresh Adam: no moments, step 0
        var.assign(np.zeros(var.shape, dtype=var.dtype))
    model.optimizer.learning_rate = schedule.lr
    return fit(model, train, val, schedule)


_HEAD_TRAINER: Any = None  # fit_head's variables and traced epoch, one per process


def _features(data: Any) -> Any:
    """Pooled features as a tensor in their stored dtype (float16 from the cache, else float32), read once."""
    import tensorflow as tf

    array = data.rows() if hasattr(data, "rows") else np.asarray(data)
    if array.dtype != np.float16:
        array = np.asarray(array, np.float32)
    tensor = tf.constant(array)
    del array
    return tensor


def _head_trainer() -> _HeadTrainer:
    global _HEAD_TRAINER
    if _HEAD_TRAINER is None:
        _HEAD_TRAINER = _HeadTrainer()
    return _HEAD_TRAINER


class _HeadTrainer:
    """One epoch of :func:`autotl.training.model.build_head`'s head on features, as plain TensorFlow, traced once per process.

    The weights and Adam slots are variables of open shape, so one trace serves
    every head width, feature size, class count and dataset; Keras' ``fit``
    traces per model and spends more per epoch in callbacks and iterators than
    in the arithmetic.  The update is TensorFlow's fused Adam kernel, which is
    Keras' Adam rule (same defaults) in one op per weight.  Features may be
    float16 (the cache's), converted batch by batch, so memory holds them at
    half the size; the arithmetic is float32.
    """

    BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-7
    VAL_CHUNK = (
        4096  # validation rows scored at once: bounded temporaries whatever the split's size
    )

    def __init__(self) -> None:
        import tensorflow as tf

        def slot(name: str) -> list[Any]:
            return [
                tf.Variable(tf.zeros([0]), shape=tf.TensorShape(None), name=f"{name}{i}")
                for i in range(4)
            ]

        self.w, self.m, self.v = slot("w"), slot("m"), slot("v")
        self.step = tf.Variable(0.0)
        f32, i32 = tf.float32, tf.int32

        def traced(features: Any) -> Any:
            # Traced in the thread that trains: TensorFlow's graph building is not safe to run in two
            # threads at once (tracing this while the cache's forward pass was traced crashed the process).
            return tf.function(
                self._epoch,
                autograph=False,
                input_signature=[
                    tf.TensorSpec([], f32),
                    tf.TensorSpec([], f32),
                    tf.TensorSpec([None, None], features),
                    tf.TensorSpec([None], i32),
                    tf.TensorSpec([None, None], features),
                    tf.TensorSpec([None], i32),
                    tf.TensorSpec([2], i32),
                    tf.TensorSpec([], i32),
                    tf.TensorSpec([None], f32),  # per-class loss weights (ones: unweighted)
                ],
            )

        self.epochs = {"float32": traced(f32), "float16": traced(tf.float16)}
        self.epoch = self.epochs["float32"]

    def start(self, weights: Sequence[np.ndarray]) -> None:
        """Load a head's weights; a fresh Adam (no moments, step 0)."""
        import tensorflow as tf

        for var, m, v, value in zip(self.w, self.m, self.v, weights):
            var.assign(tf.constant(value, tf.float32))
            m.assign(tf.zeros(value.shape))
            v.assign(tf.zeros(value.shape))
        self.step.assign(0.0)

    def weights(self) -> list[np.ndarray]:
        return [np.array(var.numpy(), copy=True) for var in self.w]

    def _scores(self, x: Any, y: Any, class_weight: Any = None) -> tuple[Any, Any]:
        """Summed (class-weighted) cross-entropy and hits of a batch."""
        import tensorflow as tf

        w = self.w
        logits = tf.matmul(tf.nn.relu(tf.matmul(x, w[0]) + w[1]), w[2]) + w[3]
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        if class_weight is not None:
            loss = loss * tf.gather(class_weight, y)
        hits = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.float32)
        return tf.reduce_sum(loss), tf.reduce_sum(hits)

    def _epoch(
        self,
        lr: Any,
        rate: Any,
        x: Any,
        y: Any,
        xv: Any,
        yv: Any,
        seed: Any,
        batch_size: Any,
        class_weight: Any,
    ) -> Any:
        """Shuffled mini-batches with dropout and Adam; returns [loss, accuracy, val_loss, val_accuracy].

        The training loss is weighted by ``class_weight`` (as Keras' ``class_weight`` does: the
        weighted sum over the batch size); the validation loss is not.
        """
        import tensorflow as tf

        n = tf.shape(x)[0]
        order = tf.argsort(tf.random.stateless_uniform([n], seed))

        def batch(start: Any, loss_sum: Any, hit_sum: Any) -> tuple[Any, Any, Any]:
            idx = order[start : start + batch_size]
            xb, yb = tf.cast(tf.gather(x, idx), tf.float32), tf.gather(y, idx)
            keep = (
                tf.random.stateless_uniform(tf.shape(xb), seed + tf.stack([0, 1 + start])) >= rate
            )
            xb = tf.where(keep, xb / (1.0 - rate), 0.0)
            with tf.GradientTape() as tape:
                loss, hits = self._scores(xb, yb, class_weight)
                mean = loss / tf.cast(tf.shape(xb)[0], tf.float32)
            grads = tape.gradient(mean, self.w)
            t = self.step.assign_add(1.0)
            for var, m, v, g in zip(self.w, self.m, self.v, grads):
                tf.raw_ops.ResourceApplyAdam(
                    var=var.handle,
                    m=m.handle,
                    v=v.handle,
                    beta1_power=self.BETA1**t,
                    beta2_power=self.BETA2**t,
                    lr=lr,
                    beta1=self.BETA1,
                    beta2=self.BETA2,
                    epsilon=self.EPSILON,
                    grad=g,
                )
            return start + batch_size, loss_sum + loss, hit_sum + hits

        _, loss_sum, hit_sum = tf.while_loop(
            lambda start, *_: start < n, batch, (tf.constant(0), tf.constant(0.0), tf.constant(0.0))
        )
        val_loss, val_hits = self._val_scores(xv, yv)
        nf, nv = tf.cast(n, tf.float32), tf.cast(tf.shape(xv)[0], tf.float32)
        return tf.stack([loss_sum / nf, hit_sum / nf, val_loss / nv, val_hits / nv])

    def _val_scores(self, xv: Any, yv: Any) -> tuple[Any, Any]:
        """Summed loss and hits over the validation rows, ``VAL_CHUNK`` at a time."""
        import tensorflow as tf

        def chunk(start: Any, loss_sum: Any, hit_sum: Any) -> tuple[Any, Any, Any]:
            end = start + self.VAL_CHUNK
            loss, hits = self._scores(tf.cast(xv[start:end], tf.float32), yv[start:end])
            return end, loss_sum + loss, hit_sum + hits

        _, loss_sum, hit_sum = tf.while_loop(
            lambda start, *_: start < tf.shape(xv)[0],
            chunk,
            (tf.constant(0), tf.constant(0.0), tf.constant(0.0)),
        )
        return loss_sum, hit_sum


def fit_head(
    head: Sequence[Any],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    schedule: Schedule,
) -> dict[str, list[float]]:
    """Train ``head`` (built: Dropout, Dense relu, Dense softmax) on cached features from its current weights.

    The same contract as :func:`fit`: a fresh Adam at the schedule's rate, shuffled
    mini-batches, early stopping on validation loss (by ``MIN_DELTA``) with
    the best epoch's weights restored into ``head``, a history with Keras'
    keys, and ``report(offset + epoch, val_accuracy)`` after every epoch.
    """
    trainer = _head_trainer()
    trainer.start([a for layer in head[1:] for a in layer.get_weights()])
    inputs = _head_inputs(train, val, int(head[2].units), schedule)
    epoch_fn = trainer.epochs[inputs["x"].dtype.name]
    epoch_fn.get_concrete_function()  # the one trace for this feature dtype, for every shape
    history, best_w = _head_epochs(trainer, epoch_fn, inputs, schedule)
    head[1].set_weights(best_w[:2])
    head[2].set_weights(best_w[2:])
    return history


def _head_inputs(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    schedule: Schedule,
) -> dict[str, Any]:
    """The traced epoch's arguments that stay the same every epoch: features, labels, rate, dropout, weights."""
    import tensorflow as tf

    x, xv = _features(train[0]), _features(val[0])
    if x.dtype != xv.dtype:
        x, xv = tf.cast(x, tf.float32), tf.cast(xv, tf.float32)
    weights = schedule.class_weight
    return {
        "lr": tf.constant(schedule.lr, tf.float32),
        "rate": tf.constant(schedule.dropout, tf.float32),
        "x": x,
        "y": tf.constant(np.asarray(train[1], np.int32)),
        "xv": xv,
        "yv": tf.constant(np.asarray(val[1], np.int32)),
        "batch_size": tf.constant(schedule.batch_size, tf.int32),
        "class_weight": tf.constant(
            np.ones(n_classes) if weights is None else np.asarray(weights), tf.float32
        ),
    }


def _head_epochs(
    trainer: _HeadTrainer, epoch_fn: Any, inputs: dict[str, Any], schedule: Schedule
) -> tuple[dict[str, list[float]], list[np.ndarray]]:
    """Epochs until early stopping: the history, and the weights of the best epoch."""
    import tensorflow as tf

    history: dict[str, list[float]] = {
        "loss": [],
        "accuracy": [],
        "val_loss": [],
        "val_accuracy": [],
    }
    best, best_w, wait = math.inf, trainer.weights(), 0
    for e in range(schedule.epochs):
        seed = tf.constant([schedule.seed % 2**31, e], tf.int32)
        values = [float(t) for t in epoch_fn(seed=seed, **inputs).numpy()]
        for key, value in zip(history, values):
            history[key].append(value)
        if not all(math.isfinite(t) for t in values):
            raise TrialFailed(
                f"training diverged at epoch {e + 1} (loss {values[0]}); lower the learning rate"
            )
        if schedule.report is not None:
            schedule.report(schedule.offset + e, values[3])
        if values[2] < best - MIN_DELTA:
            best, best_w, wait = values[2], trainer.weights(), 0
        else:
            wait += 1
            if wait >= schedule.patience:
                break
    return history, best_w


def head_probabilities(head: Sequence[Any], features: Any, batch: int = 4096) -> np.ndarray:
    """The class probabilities ``head`` (built; dropout off, as at inference) gives pooled ``features``,
    computed in slices of ``batch`` rows so a large memory-mapped split is never read whole."""
    w1, b1 = head[1].get_weights()
    w2, b2 = head[2].get_weights()
    out = []
    for start in range(0, len(features), batch):
        x = np.asarray(features[start : start + batch], dtype=np.float32)
        logits = (np.maximum(x @ w1 + b1, 0.0) @ w2 + b2).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        out.append(e / e.sum(axis=1, keepdims=True))
    return np.concatenate(out) if out else np.zeros((0, int(w2.shape[1])))
