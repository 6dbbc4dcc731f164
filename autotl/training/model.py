"""Building the classifier: resize, the backbone's preprocessing, the base, the head.

The full model takes images of any height and width (uint8 or float, 0..255
RGB), so a client sends pixels and nothing else::

    image -> Resizing -> preprocessing -> base(training=False)
          -> GlobalAveragePooling2D -> Dropout -> Dense(width, relu) -> Dense(classes, softmax)

Block boundaries are the layers, matched by the plugin's ``block_pattern``,
whose output is a single-tensor cut of the base: everything above depends on
that tensor alone.  They make unfreeze depths legal and frozen parts cacheable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autotl.backbones.preprocess import apply_preprocessing
from autotl.backbones.weights import ResolvedWeights
from autotl.errors import TrialFailed, UsageError, failure_line, first_line
from autotl.spec import BackboneSpec
from autotl.training.seeding import set_random_seed

__all__ = [
    "HEAD_LAYERS",
    "build_base",
    "block_boundaries",
    "build_head",
    "apply_head",
    "assemble",
    "freeze_below",
    "submodel",
    "top_layer_weights",
    "save_layer_weights",
    "restore_model",
]


def build_base(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    input_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> Any:
    """The frozen base with ``include_top=False`` and the resolved weights loaded.

    Random weights are drawn from ``seed`` right before the build, so the same
    base comes back whenever it is built: the feature cache and a model
    restored later rely on that.
    """
    h, w = input_size or spec.input_size
    if weights.argument is None:
        set_random_seed(seed)
    try:
        base = spec.build((h, w, 3), weights.argument)
    except Exception as exc:  # a plugin's build may raise anything
        text = first_line(exc)
        if weights.argument == "imagenet" and _download_failed(exc):
            raise UsageError(
                f"cannot download ImageNet weights for {spec.name!r} ({text}); offline, point --weights-dir "
                f"or AUTOTL_WEIGHTS_DIR at a folder holding {spec.weights_file}"
            ) from None
        raise TrialFailed(
            f"building {spec.name!r} at {h}x{w} failed: {failure_line(exc)}"
        ) from None
    base.trainable = False
    return base


def _download_failed(exc: BaseException) -> bool:
    """Whether a network error is anywhere in ``exc``'s chain (Keras' ``get_file`` re-raises one as a plain Exception).

    Decided by the errors' types, never by the words of a message.
    """
    import socket
    import urllib.error

    network = (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror)
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, network):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _layer_inputs(layer: Any) -> list[Any]:
    """The layers whose outputs feed ``layer`` (through any of its calls)."""
    producers = []
    for node in getattr(layer, "_inbound_nodes", []):
        for tensor in node.input_tensors:
            history = getattr(tensor, "_keras_history", None)
            if history is not None:
                producers.append(history.operation)
    return producers


def block_boundaries(base: Any, pattern: str) -> list[str]:
    """Names of layers matching ``pattern`` whose output is a single-tensor cut, bottom to top.

    A layer at topological position k is a cut when no edge of the graph goes
    from a layer before k to a layer after k: the top part then depends on
    layer k's output alone.  The base's last layer is never a boundary.
    """
    import re

    # Operations, not just layers: `inputs + x` in ConvNeXt or hard-swish in MobileNetV3 are
    # graph nodes too, and an edge through them must count.
    layers = list(getattr(base, "operations", None) or base.layers)
    index = {id(layer): i for i, layer in enumerate(layers)}
    reach = [i for i in range(len(layers))]  # furthest consumer of each layer
    for i, layer in enumerate(layers):
        for producer in _layer_inputs(layer):
            j = index.get(id(producer))
            if j is not None:
                reach[j] = max(reach[j], i)
    regex = re.compile(pattern)
    out, furthest = [], 0
    for k, layer in enumerate(layers[:-1]):
        if (
            furthest <= k
            and regex.search(layer.name)
            and reach[k] > k
            and hasattr(layer, "get_weights")
        ):
            out.append(layer.name)
        furthest = max(furthest, reach[k])
    return out


#: The head's layers, by name, bottom to top: the only definition of the head (see :func:`build_head`).
HEAD_LAYERS = ("head_dropout", "head_dense", "predictions")
HEAD_ACTIVATION = "relu"


def build_head(n_classes: int, width: int, dropout: float, dropout_layer: Any = None) -> list[Any]:
    """The new head on the pooled features: Dropout, Dense(width, relu), Dense(classes, softmax).

    The same layers serve the cached-feature trainers and the full model.
    ``dropout_layer`` replaces Keras' Dropout where a trainer needs one whose
    rate can change without a new model (it must keep the name ``head_dropout``).
    """
    import keras

    drop, dense, out = HEAD_LAYERS
    return [
        dropout_layer if dropout_layer is not None else keras.layers.Dropout(dropout, name=drop),
        keras.layers.Dense(width, activation=HEAD_ACTIVATION, name=dense),
        keras.layers.Dense(n_classes, activation="softmax", name=out),
    ]


def apply_head(head: Sequence[Any], x: Any) -> Any:
    for layer in head:
        x = layer(x)
    return x


def submodel(base: Any, start: str | None, end: str | None) -> Any:
    """The part of ``base`` from layer ``start``'s output (or its input) to layer ``end``'s output (or its output)."""
    import keras

    inputs = base.get_layer(start).output if start else base.input
    outputs = base.get_layer(end).output if end else base.output
    return keras.Model(inputs, outputs, name=f"{base.name}_{start or 'input'}_to_{end or 'output'}")


def assemble(
    spec: BackboneSpec, base: Any, head: Sequence[Any], input_size: tuple[int, int] | None = None
) -> Any:
    """The deployable model: raw pixels of any size in, class probabilities out."""
    import keras

    h, w = input_size or spec.input_size
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(h, w, name="resize")(image)
    x = base(apply_preprocessing(spec.preprocessing, x), training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(image, apply_head(head, x), name=f"autotl_{spec.name.replace('.', '_')}")


def freeze_below(base: Any, cut: str | None) -> int:
    """Make the layers above ``cut`` trainable, all others frozen; return how many weight layers train.

    ``cut=None`` unfreezes the whole base.  BatchNormalization layers stay
    frozen: in Keras a frozen BatchNormalization runs in inference mode, so its
    statistics, learned on ImageNet, are not overwritten by a few small batches.
    """
    import keras

    base.trainable = True
    above = cut is None
    unfrozen = 0
    for layer in base.layers:
        trainable = above and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += bool(trainable and layer.weights)
        if layer.name == cut:
            above = True
    if cut is not None and not above:
        raise TrialFailed(f"block boundary {cut!r} is not a layer of {base.name}")
    return unfrozen


def top_layer_weights(base: Any, cut: str | None) -> dict[str, list[Any]]:
    """Weights of the base's layers above ``cut`` (all layers for ``None``), by layer name."""
    names = [layer.name for layer in base.layers]
    start = names.index(cut) + 1 if cut else 0
    return {layer.name: layer.get_weights() for layer in base.layers[start:] if layer.weights}


def save_layer_weights(path: Any, weights: dict[str, list[Any]]) -> None:
    """Write ``{layer: [arrays]}`` as a plain ``.npz`` (no pickle), atomically."""
    import os

    import numpy as np

    # Any: numpy's stub types savez's keywords as its allow_pickle flag; these are arrays
    arrays: dict[str, Any] = {
        f"{name}::{i}": np.asarray(w) for name, ws in weights.items() for i, w in enumerate(ws)
    }
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def restore_model(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    n_classes: int,
    head_width: int,
    dropout: float,
    layer_weights_file: Any,
    seed: int = 0,
    base: Any = None,
) -> Any:
    """Rebuild a trial's full model from its backbone weights and the layers it trained.

    A search stores only what a trial changed (a few kilobytes for a head), so
    finishing a trial costs milliseconds; the deployable model is assembled from
    it when someone asks for it.  ``base``, if given, is a pristine base to
    build on (it is changed: reset it afterwards).
    """
    import numpy as np

    base = base if base is not None else build_base(spec, weights, seed=seed)
    head = build_head(n_classes, head_width, dropout)
    model = assemble(spec, base, head)
    stored: dict[str, dict[int, Any]] = {}
    with np.load(layer_weights_file, allow_pickle=False) as npz:
        for key in npz.files:
            name, i = key.rsplit("::", 1)
            stored.setdefault(name, {})[int(i)] = npz[key]
    by_name = {layer.name: layer for layer in [*base.layers, *head]}
    for name, ws in stored.items():
        if name not in by_name:
            raise TrialFailed(
                f"stored weights name layer {name!r}, which {spec.name} does not have"
            )
        by_name[name].set_weights([ws[i] for i in range(len(ws))])
    return model
