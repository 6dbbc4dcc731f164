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

__all__ = [
    "Preprocessing",
    "BackboneSpec",
    "SampleSpec",
    "WEIGHTS_IMAGENET",
    "WEIGHT_FILE_FORMATS",
]

#: The value of ``weights`` that asks Keras to download the ImageNet weights.
WEIGHTS_IMAGENET = "imagenet"
#: Weight-file name endings ``keras.Model.load_weights`` reads, and how each matches weights to layers.
WEIGHT_FILE_FORMATS: dict[str, str] = {
    ".weights.h5": "Keras 3 `save_weights`: by layer class and order, not by name",
    ".keras": "a whole saved model: by layer class and order, not by name",
    ".h5": "legacy HDF5 (keras.applications' files): by order of the layers with weights",
    ".hdf5": "legacy HDF5: by order of the layers with weights",
}
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")

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
    the path of a local weight file.  ``downloadable`` says whether
    ``"imagenet"`` means anything to ``build``: true for ``keras.applications``
    models, false for a hand-written backbone, whose weights come only from a
    file (``weights_file`` in ``--weights-dir``, in one of
    :data:`WEIGHT_FILE_FORMATS`).  ``block_pattern`` is a regular expression
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
    downloadable: bool = True
    plugin: str = field(default="", compare=False)

    @property
    def accepted_sizes(self) -> tuple[tuple[int, int], ...]:
        return self.input_sizes or (self.input_size,)

    def validate(self) -> list[str]:
        """The problems with this spec, as ``field: what is wrong`` strings (never raises)."""
        problems = []
        if not (isinstance(self.name, str) and _NAME.fullmatch(self.name)):
            problems.append(f"name: must be letters, digits, '_', '-' or '.', got {self.name!r}")
        if not callable(self.build):
            problems.append(f"build: must be callable, got {type(self.build).__name__}")
        problems += self._size_problems()
        if not isinstance(self.preprocessing, Preprocessing):
            problems.append("preprocessing: must be an autotl.Preprocessing")
        elif self.preprocessing.channel_order not in ("RGB", "BGR"):
            problems.append(
                f"preprocessing.channel_order: must be 'RGB' or 'BGR', got {self.preprocessing.channel_order!r}"
            )
        if self.preprocess_input is not None and not callable(self.preprocess_input):
            problems.append(
                f"preprocess_input: must be callable or None, got {type(self.preprocess_input).__name__}"
            )
        if not isinstance(self.block_pattern, str):
            problems.append(
                f"block_pattern: must be a regular expression string, got {type(self.block_pattern).__name__}"
            )
        else:
            try:
                re.compile(self.block_pattern)
            except re.error as exc:
                problems.append(f"block_pattern: not a regular expression ({exc})")
        problems += self._weights_problems()
        for name in ("family", "description"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name}: must be a string")
        return problems

    def _size_problems(self) -> list[str]:
        def ok(size: Any) -> bool:
            return (
                isinstance(size, tuple)
                and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 32 for v in size)
            )

        size, sizes = self.input_size, self.input_sizes
        if not ok(size):
            return [f"input_size: must be (height, width) of ints >= 32, got {size!r}"]
        if not isinstance(sizes, tuple) or not all(ok(s) for s in sizes):
            return [f"input_sizes: must be a tuple of (height, width) pairs, got {sizes!r}"]
        if sizes and size not in sizes:
            return [f"input_sizes: must contain input_size {size}, got {sizes!r}"]
        return []

    def _weights_problems(self) -> list[str]:
        problems = []
        file = self.weights_file
        if file is not None and not (
            isinstance(file, str)
            and _NAME.fullmatch(file)
            and file.endswith(tuple(WEIGHT_FILE_FORMATS))
        ):
            problems.append(
                f"weights_file: must be a file name (no folder) ending in "
                f"{', '.join(WEIGHT_FILE_FORMATS)}, got {file!r}"
            )
        sha = self.weights_sha256
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            problems.append("weights_sha256: must be 64 lowercase hex digits")
        if not isinstance(self.downloadable, bool):
            problems.append(f"downloadable: must be True or False, got {self.downloadable!r}")
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

    def validate(self) -> list[str]:
        """The problems with this spec, as ``field: what is wrong`` strings (never raises)."""
        problems = []
        if not (isinstance(self.name, str) and _NAME.fullmatch(self.name)):
            problems.append(f"name: must be letters, digits, '_', '-' or '.', got {self.name!r}")
        if not callable(self.load):
            problems.append(f"load: must be callable, got {type(self.load).__name__}")
        return problems
