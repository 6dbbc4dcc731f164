"""The TensorFlow SavedModel: written with two serving signatures, and read back as a predictor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotl.export._common import (
    LABELS_FILE,
    SAVEDMODEL_DIR,
    Predict,
    _by_shape,
    _read_labels,
    _tf_variables,
)
from autotl.export._format import Format, Loaded, WriteContext


def savedmodel_predictor(path: Path) -> tuple[Predict, Predict]:
    """(uint8 images -> probabilities via ``serving_default``, the same via ``serving_bytes`` on PNG-encoded images)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    default, raw = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]
    n = int(default.structured_outputs["probabilities"].shape[-1])

    def by_pixels(images: Sequence[np.ndarray]) -> np.ndarray:
        return _by_shape(
            images,
            lambda x: default(images=tf.constant(x.astype(np.uint8)))["probabilities"].numpy(),
            n,
        )

    def by_bytes(images: Sequence[np.ndarray]) -> np.ndarray:
        out = [
            raw(image_bytes=tf.constant([_png(im) for im in images[s : s + 32]]))[
                "probabilities"
            ].numpy()
            for s in range(0, len(images), 32)
        ]
        return np.concatenate(out) if out else np.zeros((0, n), np.float32)

    by_pixels.loaded = loaded  # type: ignore[attr-defined]  # keep the SavedModel alive
    return by_pixels, by_bytes


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _decode(data: Any, size: tuple[int, int]) -> Any:
    """One encoded file (a string tensor) to float pixels at ``size``, decoded as autotl decodes for training."""
    import tensorflow as tf

    def png() -> Any:  # transparency on white, as autotl.data.dataset.decode_image does
        rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32)
        alpha = rgba[..., 3:]
        on_white = (rgba[..., :3] * alpha + 255.0 * (255.0 - alpha)) / 255.0
        return tf.cast(tf.round(on_white), tf.uint8)

    def jpeg() -> Any:  # TF's default DCT (INTEGER_FAST) differs from Pillow's by up to ~7 levels
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

    def other() -> Any:  # GIF (first frame), BMP
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
    pixels = tf.cond(is_png, png, lambda: tf.cond(is_jpeg, jpeg, other))
    pixels = tf.ensure_shape(pixels, [None, None, 3])
    # the bilinear resize the model's Resizing layer applies; resizing again to the same size is the identity
    return tf.image.resize(tf.cast(pixels, tf.float32), size, method="bilinear")


def write_savedmodel(
    model: Any, class_names: list[str], size: tuple[int, int], folder: Path, labels_file: Path
) -> None:
    """``model`` as a SavedModel in ``folder``: ``serving_default`` (uint8 pixels) and ``serving_bytes`` (encoded files)."""
    import tensorflow as tf

    h, w = size

    class Serving(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="autotl_serving")
            self.model = model
            self.model_variables = _tf_variables(model)
            self.labels = tf.saved_model.Asset(str(labels_file))  # assets/labels.txt

        def _outputs(self, pixels: Any) -> dict[str, Any]:
            probs = self.model(pixels, training=False)
            names = tf.constant(class_names)
            return {"probabilities": probs, "classes": tf.gather(names, tf.argmax(probs, axis=-1))}

        @tf.function(
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
        )
        def serve(self, images: Any) -> dict[str, Any]:
            return self._outputs(tf.cast(images, tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(self, image_bytes: Any) -> dict[str, Any]:
            pixels = tf.map_fn(
                lambda data: _decode(data, (h, w)),
                image_bytes,
                fn_output_signature=tf.TensorSpec([h, w, 3], tf.float32),
            )
            return self._outputs(pixels)

    module = Serving()
    tf.saved_model.save(
        module,
        str(folder),
        signatures={
            "serving_default": module.serve.get_concrete_function(),
            "serving_bytes": module.serve_bytes.get_concrete_function(),
        },
    )


def _write(model: Any, ctx: WriteContext) -> None:
    write_savedmodel(
        model, ctx.class_names, ctx.input_size, ctx.folder / SAVEDMODEL_DIR, ctx.labels_file
    )


def _load(path: Path) -> Loaded:
    """Both signatures are checked; ``serving_default`` is what ``autotl predict`` runs."""
    by_pixels, by_bytes = savedmodel_predictor(path)
    labels = path / "assets" / LABELS_FILE
    return Loaded(
        predict=by_pixels,
        checks={
            "savedmodel:serving_default": by_pixels,
            "savedmodel:serving_bytes": by_bytes,
        },
        class_names=_read_labels(labels) if labels.is_file() else None,
    )


def _usage(size: tuple[int, int], facts: Mapping[str, Any]) -> str:
    return (
        f"`{SAVEDMODEL_DIR}/`: signature `serving_default` takes `images` uint8 `[batch, height, width, 3]`; "
        "signature `serving_bytes` takes `image_bytes` string `[batch]` (encoded JPEG/PNG/GIF/BMP). "
        "Both return `probabilities` float32 `[batch, classes]` and `classes` string `[batch]`. "
        f"Class names are also in `{SAVEDMODEL_DIR}/assets/{LABELS_FILE}`."
    )


FORMAT = Format(
    name="savedmodel",
    files=(SAVEDMODEL_DIR,),
    write=_write,
    load=_load,
    recognises=lambda p: p.is_dir() and (p / "saved_model.pb").is_file(),
    title="a SavedModel folder",
    description="TensorFlow SavedModel for TF Serving, Java, Go, C++ (pixels or encoded files in)",
    usage=_usage,
    lineage_files=(f"{SAVEDMODEL_DIR}/saved_model.pb",),
)
