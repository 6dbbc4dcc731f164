"""The full-integer TFLite format: uint8 in and out, calibrated on training images (``--quantize int8``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotl.export._common import TFLITE_INT8_FILE
from autotl.export._format import REPRESENTATIVE, Format, WriteContext
from autotl.export._tflite import convert, load_tflite, recognises_tflite


def _write(model: Any, ctx: WriteContext) -> None:
    (ctx.folder / TFLITE_INT8_FILE).write_bytes(convert(model, ctx.input_size, ctx.representative))


def _usage(size: tuple[int, int], facts: Mapping[str, Any]) -> str:
    h, w = size
    scale, zero = facts.get("input_quantization", [1.0, 0])
    pixels = (
        "the raw pixel values"
        if (scale, zero) == (1.0, 0)
        else "quantize pixels as round(p / scale) + zero_point"
    )
    out_scale = facts.get("output_quantization", [0, 0])[0]
    return (
        f"`{TFLITE_INT8_FILE}`: one uint8 image `[1, {h}, {w}, 3]` resized the same way "
        f"(input quantization scale {scale:g}, zero point {zero}: {pixels}); output uint8, "
        f"probability = value x {out_scale:g}."
    )


FORMAT = Format(
    name="tflite_int8",
    selector="tflite",
    quantize="int8",
    files=(TFLITE_INT8_FILE,),
    write=_write,
    load=load_tflite,
    recognises=recognises_tflite,
    title="a .tflite file",
    description="TensorFlow Lite, fully integer (uint8 in and out), for microcontrollers and NPUs",
    needs=frozenset({REPRESENTATIVE}),
    usage=_usage,
)
