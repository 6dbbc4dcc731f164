"""ONNX: ``model.onnx`` for ONNX Runtime (float), and ``model_int8.onnx`` quantized by ONNX Runtime (``--quantize int8``).

The Keras model is traced as one ``tf.function`` (uint8 ``images [batch, height,
width, 3]`` of any size in, ``probabilities`` out, the model's own ``Resizing``
and preprocessing inside) and converted by tf2onnx at opset 17.  The class names
travel inside the file (``metadata_props["labels"]``, JSON), so ``autotl predict
model.onnx`` needs nothing beside it.

The int8 file is ONNX Runtime's static quantization of the float one: QDQ
format, int8 activations and int8 weights per channel (S8S8, what ONNX Runtime
recommends first on x86-64), calibrated (min-max) on the training images the
export hands to quantized formats.  Its input and output stay uint8 pixels and
float probabilities, so it is a drop-in for the float file.  On MobileNetV2 0.35
(hymenoptera, 153 validation images) S8S8 kept 151 top-1 answers of the float
model's, uint8 activations (U8S8) 149 -- under the 98% an int8 export must keep
-- and U8S8 with ``reduce_range`` 138.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from autotl._extras import require
from autotl._stderr import stderr_silenced
from autotl.export._common import ONNX_FILE, ONNX_INT8_FILE, Predict, _by_shape, _tf_variables
from autotl.export._format import REPRESENTATIVE, Format, Loaded, WriteContext

if TYPE_CHECKING:
    import onnxruntime

OPSET = 17  # ONNX Runtime 1.14 and later run it; QDQ per-channel quantization needs 13
INPUT, OUTPUT = "images", "probabilities"
LABELS_KEY = "labels"  # metadata_props key holding the class names as JSON


def require_onnx() -> None:
    """One line naming the ``autotl[onnx]`` extra when tf2onnx, onnx or ONNX Runtime is missing."""
    require("onnx", "the onnx export format")


def to_onnx(model: Any, class_names: Optional[Sequence[str]] = None) -> bytes:
    """``model`` (Keras, raw pixels in) as a serialised ONNX model: uint8 ``images`` of any size, float ``probabilities``."""
    import tensorflow as tf
    import tf2onnx

    class Serving(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="autotl_onnx")
            self.model = model
            self.model_variables = _tf_variables(model)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT)])
        def serve(self, images: Any) -> dict[str, Any]:
            return {OUTPUT: self.model(tf.cast(images, tf.float32), training=False)}

    module = Serving()
    with warnings.catch_warnings(), stderr_silenced():
        warnings.simplefilter("ignore")
        tf2onnx.logging.set_level(tf2onnx.logging.ERROR)
        proto, _ = tf2onnx.convert.from_function(
            module.serve, input_signature=module.serve.input_signature, opset=OPSET
        )
    _name_dims(proto)
    if class_names is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = LABELS_KEY, json.dumps(list(class_names))
    proto.producer_name = "autotl (tf2onnx)"
    return proto.SerializeToString()


def _name_dims(proto: Any) -> None:
    """Name the input's free dimensions ``batch, height, width`` (tf2onnx calls them ``unk__N``) everywhere."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {d.dim_param: new for d, new in zip(dims, ("batch", "height", "width")) if d.dim_param}
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]


def quantize_int8(onnx_model: bytes, representative: np.ndarray) -> bytes:
    """ONNX Runtime's static int8 quantization of ``onnx_model`` (QDQ, int8 activations, int8 weights per
    channel), calibrated on ``representative`` images (float 0..255, ``[n, h, w, 3]``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):  # one training image at a time, as uint8 pixels
        def __init__(self) -> None:
            self.images = iter(np.clip(np.round(representative), 0, 255).astype(np.uint8))

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            image = next(self.images, None)
            return None if image is None else {INPUT: image[None]}

    with tempfile.TemporaryDirectory(prefix="autotl-onnx-") as tmp:
        src, pre, out = Path(tmp, "float.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(onnx_model)
        with warnings.catch_warnings(), stderr_silenced():
            warnings.simplefilter("ignore")
            try:  # shape inference and graph folding: what ONNX Runtime recommends before quantizing
                quant_pre_process(str(src), str(pre))
            except Exception:  # a graph it cannot fold is quantized as it is
                pre = src
            quantize_static(
                str(pre),
                str(out),
                Calibration(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        return _with_metadata(out.read_bytes(), onnx_model)


def _with_metadata(quantized: bytes, original: bytes) -> bytes:
    """The quantized model with the float model's metadata (the class names), which quantization drops."""
    import onnx

    model, source = onnx.load_from_string(quantized), onnx.load_from_string(original)
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    return model.SerializeToString()


def session(model: bytes | str | Path, threads: int = 0) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on the CPU; ``threads`` > 0 fixes the intra-op threads (one inter-op thread)."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    content = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])


def onnx_predictor(sess: onnxruntime.InferenceSession) -> Predict:
    """uint8 images (any size, one size per batch) -> probabilities through an ONNX Runtime session."""
    n = int(sess.get_outputs()[0].shape[-1])

    def predict(images: Sequence[np.ndarray]) -> np.ndarray:
        return _by_shape(
            images,
            lambda x: sess.run([OUTPUT], {INPUT: np.clip(np.round(x), 0, 255).astype(np.uint8)})[0],
            n,
        )

    return predict


def load_onnx(path: Path) -> Loaded:
    """An ``.onnx`` file read back in ONNX Runtime: its predictor, its class names, and facts for parity.json."""
    sess = session(path)
    import onnxruntime as ort

    meta = sess.get_modelmeta().custom_metadata_map
    inp = sess.get_inputs()[0]
    facts = {
        "input": f"{inp.name} {inp.type} {inp.shape}",
        "opset": OPSET,
        "runtime": f"onnxruntime {ort.__version__}",
        "quantized_nodes": _quantized_nodes(path),
    }
    names = json.loads(meta[LABELS_KEY]) if LABELS_KEY in meta else None
    return Loaded(predict=onnx_predictor(sess), facts=facts, class_names=names)


def _quantized_nodes(path: Path) -> int:
    """How many QuantizeLinear nodes the graph holds (0 for a float model)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(node.op_type == "QuantizeLinear" for node in graph.node)


def recognises_onnx(path: Path) -> bool:
    return path.is_file() and path.suffix == ".onnx"


def _write(model: Any, ctx: WriteContext) -> None:
    (ctx.folder / ONNX_FILE).write_bytes(to_onnx(model, ctx.class_names))


def _write_int8(model: Any, ctx: WriteContext) -> None:
    assert ctx.representative is not None  # the row needs REPRESENTATIVE
    done = ctx.folder / ONNX_FILE  # the float row, written first, is what is quantized
    source = done.read_bytes() if done.is_file() else to_onnx(model, ctx.class_names)
    (ctx.folder / ONNX_INT8_FILE).write_bytes(quantize_int8(source, ctx.representative))


def _usage(size: tuple[int, int], facts: Mapping[str, Any]) -> str:
    return (
        f"`{ONNX_FILE}`: ONNX Runtime (`onnxruntime.InferenceSession(path)`), input `{INPUT}` uint8 "
        "`[batch, height, width, 3]` of any size (one size per batch; resized inside), output "
        f"`{OUTPUT}` float32 `[batch, classes]`; class names in the file's metadata (`labels`)."
    )


def _usage_int8(size: tuple[int, int], facts: Mapping[str, Any]) -> str:
    return (
        f"`{ONNX_INT8_FILE}`: the same inputs and outputs, int8 inside (ONNX Runtime static "
        "quantization, QDQ: int8 activations, int8 per-channel weights, calibrated on training images)."
    )


FORMAT = Format(
    name="onnx",
    files=(ONNX_FILE,),
    write=_write,
    load=load_onnx,
    recognises=recognises_onnx,
    title="an .onnx file",
    description=f"ONNX (opset {OPSET}) for ONNX Runtime and other ONNX runtimes",
    usage=_usage,
    default=False,
    requires=require_onnx,
)

FORMAT_INT8 = Format(
    name="onnx_int8",
    selector="onnx",
    quantize="int8",
    files=(ONNX_INT8_FILE,),
    write=_write_int8,
    load=load_onnx,
    recognises=recognises_onnx,
    title="an .onnx file",
    description="ONNX, int8 (ONNX Runtime static quantization, QDQ; float in and out)",
    needs=frozenset({REPRESENTATIVE}),
    usage=_usage_int8,
    default=False,
    requires=require_onnx,
)
