"""One Keras model out of several trials' models: their probabilities averaged, optionally over a mirror image too.

::

    image -> Resizing(h, w) -+-> trial_3(x)        -> x weight_3 -+
                             +-> trial_5(x)        -> x weight_5 -+-> Add -> probabilities
                             +-> flip(x) -> trial_3 ... (TTA)     -+

Each member is its trial's own full model (its own Resizing, its own
preprocessing, its base and head), so members of different backbones mix.
The outer ``Resizing`` to the largest member's size gives the ensemble one
input size, which the TFLite and SavedModel formats need; when every member
has that size, the members' own ``Resizing`` is the identity and the
ensemble's output is exactly the weighted average of the members' outputs.

Only built-in layers and Keras ops: the mirror is ``keras.ops.flip`` on the
width axis, a node of the functional graph (``RandomFlip`` is random), so the
saved file loads with ``keras.saving.load_model(path, safe_mode=True)`` where
autotl is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autotl.errors import UsageError

__all__ = ["TTA_MODES", "check_tta", "model_input_size", "combined_model"]

#: Test-time augmentations: ``none``, or ``flip`` (the image and its horizontal mirror, averaged).
TTA_MODES = ("none", "flip")


def check_tta(tta: str | None) -> str | None:
    """``tta`` as a mode (None for ``none``); a one-line UsageError for an unknown one."""
    if tta is None or str(tta).lower() == "none":
        return None
    mode = str(tta).lower()
    if mode not in TTA_MODES:
        raise UsageError(
            f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_MODES)}"
        )
    return mode


def model_input_size(model: Any) -> tuple[int, int]:
    """The size a model built by autotl resizes images to (its ``resize`` layer)."""
    try:
        layer = model.get_layer("resize")
        return int(layer.height), int(layer.width)
    except (ValueError, AttributeError):
        raise UsageError(
            f"model {getattr(model, 'name', '?')} has no 'resize' layer; only models built by autotl can be combined"
        ) from None


def combined_model(
    members: Sequence[tuple[str, Any, float]],
    tta: str | None = None,
    size: tuple[int, int] | None = None,
    name: str = "autotl_ensemble",
) -> Any:
    """The weighted average of ``members`` (``(name, Keras model, weight)``), over the image and, with
    ``tta="flip"``, its mirror; raw pixels of any size in, probabilities out.

    Images are first resized to ``size`` (default: the largest member's).
    Each member model is renamed to its ``name`` (nested models must have
    distinct names); weights are normalised to sum to 1.
    """
    import keras

    tta = check_tta(tta)
    if not members:
        raise ValueError("an ensemble needs at least one member")
    total = float(sum(w for _, _, w in members))
    if total <= 0:
        raise ValueError(
            f"member weights must sum to more than 0, got {[w for _, _, w in members]}"
        )
    sizes = [model_input_size(m) for _, m, _ in members]
    h, w = size or max(sizes, key=lambda s: (s[0] * s[1], s))
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(h, w, name="resize")(image)
    views = [("", x)] + ([("_flip", keras.ops.flip(x, axis=2))] if tta == "flip" else [])
    outputs = []
    for member_name, model, weight in members:
        model.name = member_name
        share = float(weight) / total / len(views)
        for tag, view in views:
            probs = model(view, training=False)  # inference always, as assemble calls the base
            outputs.append(keras.layers.Rescaling(share, name=f"{member_name}{tag}_weight")(probs))
    probs = keras.layers.Add(name="probabilities")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(image, probs, name=name)
