"""The data a backbone plugin returns: the whole plugin contract.

Plugins never subclass autotl internals; they return frozen dataclasses, the way
timm stores one ``PretrainedCfg`` per model.  autotl checks every field when the
plugin is registered, so a mistake fails at start-up, not in trial 17.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["Preprocessing", "BackboneSpec", "SampleSpec", "WEIGHTS_IMAGENET"]

#: The value of ``weights`` that asks Keras to download the ImageNet weights.
WEIGHTS_IMAGENET = "imagenet"

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Preprocessing:
    """A backbone's ``preprocess_input`` as a per-channel affine map.

    For pixels ``x`` in 0..255 RGB the backbone sees
    ``y[..., c] = x[..., source[c]] * scale[c] + offset[c]``, where ``source``
    is ``(0, 1, 2)`` for RGB and ``(2, 1, 0)`` for BGR.  Every
    ``keras.applications`` mode is such a map, so autotl bakes it into the
    model with built-in layers (``Rescaling`` or a fixed 1x1 convolution) and
    the saved model loads with ``safe_mode=True`` where autotl is absent.
    """

    mode: str
    scale: Triple = (1.0, 1.0, 1.0)
    offset: Triple = (0.0, 0.0, 0.0)
    channel_order: str = "RGB"

    @classmethod
    def tf(cls) -> Preprocessing:
        """Keras ``mode="tf"``: scale to [-1, 1] (MobileNet, Inception, Xception)."""
        return cls("tf", (1 / 127.5,) * 3, (-1.0,) * 3)

    @classmethod
    def caffe(cls) -> Preprocessing:
        """Keras ``mode="caffe"``: RGB to BGR, then subtract the ImageNet BGR mean (ResNet50)."""
        return cls("caffe", (1.0,) * 3, (-103.939, -116.779, -123.68), "BGR")

    @classmethod
    def torch(cls) -> Preprocessing:
        """Keras ``mode="torch"``: scale to [0, 1], then normalise per channel (DenseNet)."""
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        scale = tuple(1 / (255.0 * s) for s in std)
        offset = tuple(-m / s for m, s in zip(mean, std))
        return cls("torch", scale, offset)  # type: ignore[arg-type]

    @classmethod
    def none(cls) -> Preprocessing:
        """Pixels pass as they are: the backbone preprocesses inside itself (EfficientNet)."""
        return cls("none")

    @property
    def source(self) -> tuple[int, int, int]:
        return (2, 1, 0) if self.channel_order == "BGR" else (0, 1, 2)

    @property
    def is_identity(self) -> bool:
        return (
            self.channel_order == "RGB" and self.scale == (1.0,) * 3 and self.offset == (0.0,) * 3
        )

    def apply(self, pixels: Any) -> Any:
        """The map on a numpy array, for tests and for ``plugins check``."""
        import numpy as np

        x = np.asarray(pixels, dtype="float32")[..., list(self.source)]
        return x * np.asarray(self.scale, "float32") + np.asarray(self.offset, "float32")

    def describe(self) -> str:
        if self.is_identity:
            return "none (inside the model)" if self.mode == "none" else self.mode
        return f"{self.mode} ({self.channel_order})"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything autotl needs to know about one pretrained base.

    ``build(input_shape, weights)`` returns the base with ``include_top=False``;
    ``weights`` is ``None`` (random), ``"imagenet"`` (Keras downloads them) or
    the path of a local weight file.  ``block_pattern`` is a regular expression
    over layer names: the outputs of matching layers that are single-tensor
    cuts of the graph are the block boundaries, so "unfreeze 2 blocks" means
    the same thing for every backbone and the frozen part below a boundary can
    be cached.
    """

    name: str
    build: Callable[[tuple[int, int, int], Optional[str]], Any]
    input_size: tuple[int, int]
    preprocessing: Preprocessing
    block_pattern: str
    preprocess_input: Optional[Callable[[Any], Any]] = None
    input_sizes: tuple[tuple[int, int], ...] = ()
    weights_file: Optional[str] = None
    weights_sha256: Optional[str] = None
    family: str = ""
    description: str = ""
    plugin: str = field(default="", compare=False)

    @property
    def accepted_sizes(self) -> tuple[tuple[int, int], ...]:
        return self.input_sizes or (self.input_size,)

    def validate(self) -> list[str]:
        """The problems with this spec, as ``field: what is wrong`` strings."""
        problems = []
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name or ""):
            problems.append(f"name: must be letters, digits, '_', '-' or '.', got {self.name!r}")
        if not callable(self.build):
            problems.append(f"build: must be callable, got {type(self.build).__name__}")
        size = self.input_size
        if not (
            isinstance(size, tuple)
            and len(size) == 2
            and all(isinstance(v, int) and v >= 32 for v in size)
        ):
            problems.append(f"input_size: must be (height, width) of ints >= 32, got {size!r}")
        elif self.input_sizes and size not in self.input_sizes:
            problems.append(
                f"input_sizes: must contain input_size {size}, got {self.input_sizes!r}"
            )
        if not isinstance(self.preprocessing, Preprocessing):
            problems.append("preprocessing: must be an autotl.Preprocessing")
        elif self.preprocessing.channel_order not in ("RGB", "BGR"):
            problems.append(
                f"preprocessing.channel_order: must be 'RGB' or 'BGR', got {self.preprocessing.channel_order!r}"
            )
        try:
            re.compile(self.block_pattern)
        except (re.error, TypeError) as exc:
            problems.append(f"block_pattern: not a regular expression ({exc})")
        if self.weights_sha256 is not None and not re.fullmatch(
            r"[0-9a-f]{64}", self.weights_sha256
        ):
            problems.append("weights_sha256: must be 64 lowercase hex digits")
        return problems


@dataclass(frozen=True)
class SampleSpec:
    """A built-in image set, so a first run needs no data of the user's.

    ``load()`` returns ``(images, labels, class_names)``: a sequence of uint8
    RGB arrays, an int array of labels, and the class names.
    """

    name: str
    load: Callable[[], tuple[Sequence[Any], Any, Sequence[str]]]
    description: str = ""
    needs_network: bool = False
    plugin: str = field(default="", compare=False)
