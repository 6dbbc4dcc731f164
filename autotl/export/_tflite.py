"""TFLite: the float format's row, the conversion (float or full-integer, uint8 in and out) and the interpreter
as a predictor (``_tflite_int8`` is the quantized row, on the same conversion)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotl._stderr import stderr_silenced
from autotl.data.dataset import resize_images
from autotl.export._common import TFLITE_FILE, Predict, _quiet, _tf_variables
from autotl.export._format import Format, Loaded, WriteContext


def _interpreter(model_path: Path) -> Any:
    _quiet()
    try:  # LiteRT, the successor of tf.lite.Interpreter, when installed
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_path=str(model_path))
        interpreter.allocate_tensors()
    return interpreter


def tflite_predictor(path: Path) -> tuple[Predict, dict[str, Any]]:
    """Images -> probabilities through a ``.tflite`` file: resize, quantize if it takes integers, invoke, dequantize."""
    it = _interpreter(path)
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    _, h, w, _ = (int(v) for v in inp["shape"])
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = outp["quantization"]
    info = {
        "input_dtype": np.dtype(inp["dtype"]).name,
        "input_shape": [1, h, w, 3],
        "input_quantization": [float(in_scale), int(in_zero)],
        "output_dtype": np.dtype(outp["dtype"]).name,
        "output_quantization": [float(out_scale), int(out_zero)],
    }

    int_in, int_out = (
        np.issubdtype(inp["dtype"], np.integer),
        np.issubdtype(outp["dtype"], np.integer),
    )
    lo, hi = (np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max) if int_in else (None, None)

    def predict(images: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for im in images:
            x = resize_images(
                np.asarray(im)[None], (h, w)
            )  # [1, h, w, 3], as the model's Resizing does
            if int_in:
                x = np.clip(np.round(x / (in_scale or 1.0) + in_zero), lo, hi)
            it.set_tensor(inp["index"], x.astype(inp["dtype"]))
            it.invoke()
            y = it.get_tensor(outp["index"])[0]
            out.append(
                (y.astype(np.float32) - out_zero) * out_scale if int_out else y.astype(np.float32)
            )
        return np.stack(out) if out else np.zeros((0, int(outp["shape"][-1])), np.float32)

    return predict, info


def convert(
    model: Any, size: tuple[int, int], representative: Optional[np.ndarray] = None
) -> bytes:
    """Float TFLite (or full-integer with uint8 in/out when ``representative`` images are given), input ``[1, h, w, 3]``."""
    import tensorflow as tf

    h, w = size

    class Fixed(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="autotl_tflite")
            self.model = model
            self.model_variables = _tf_variables(model)

        @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32, name="image")])
        def serve(self, image: Any) -> Any:
            return self.model(image, training=False)

    module = Fixed()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    if representative is not None:

        def calibration() -> Any:
            for x in representative:
                yield [x[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with (
        warnings.catch_warnings(),
        stderr_silenced(),
    ):  # the converter's C++ notes ("fully_quantize: 0, ...")
        warnings.simplefilter("ignore")
        return converter.convert()


def load_tflite(path: Path) -> Loaded:
    """A ``.tflite`` file read back: its predictor, and its dtypes and quantization as facts for parity.json."""
    predict, info = tflite_predictor(path)
    return Loaded(predict=predict, facts=info)


def recognises_tflite(path: Path) -> bool:
    return path.is_file() and path.suffix == ".tflite"


def _write(model: Any, ctx: WriteContext) -> None:
    (ctx.folder / TFLITE_FILE).write_bytes(convert(model, ctx.input_size))


def _usage(size: tuple[int, int], facts: Mapping[str, Any]) -> str:
    h, w = size
    return (
        f"`{TFLITE_FILE}`: one float32 image `[1, {h}, {w}, 3]`, pixels 0..255 already resized to {h}x{w} "
        "with bilinear interpolation (no antialiasing, half-pixel centres: `tf.image.resize`)."
    )


FORMAT = Format(
    name="tflite",
    files=(TFLITE_FILE,),
    write=_write,
    load=load_tflite,
    recognises=recognises_tflite,
    title="a .tflite file",
    description="TensorFlow Lite, float32, for phones and edge devices",
    usage=_usage,
)
