"""Exporting a run's model for production, with parity verified rather than assumed.

``autotl export RUN_DIR --out DIR`` writes, for the best trial (or ``--trial N``):

* ``model.keras``: the trial's model, loadable with ``keras.saving.load_model(path,
  safe_mode=True)`` where autotl is not installed (built-in layers only);
* ``savedmodel/``: a TensorFlow SavedModel for TF Serving (and Java, Go, C++) with two
  signatures: ``serving_default`` takes ``images``, uint8 ``[batch, height, width, 3]``
  of any size; ``serving_bytes`` takes ``image_bytes``, a string ``[batch]`` of encoded
  JPEG/PNG/GIF/BMP files.  Both return ``probabilities`` (float32 ``[batch, classes]``)
  and ``classes`` (string ``[batch]``, the top-1 name).  ``assets/labels.txt`` holds the
  class names;
* ``model.tflite`` (float32 ``[1, h, w, 3]`` pixels 0..255, already resized to the
  backbone's size) and, with ``quantize="int8"``, ``model_int8.tflite`` (uint8 in and
  out, calibrated on up to 100 training images);
* with ``formats="onnx"`` (needs ``pip install 'autotl[onnx]'``), ``model.onnx``
  for ONNX Runtime (uint8 ``images`` of any size in, ``probabilities`` out, class
  names in its metadata) and, with ``quantize="int8"``, ``model_int8.onnx``
  (ONNX Runtime's static quantization, calibrated like the TFLite one);
* ``labels.txt``, ``MODEL_CARD.md`` and ``parity.json``.

Nothing is assumed.  First the Keras model must reproduce, on the whole validation
split, the accuracy and loss the search recorded for the trial (a model assembled
from stored layers on other backbone weights would fail here).  Then every file is
built in a staging folder, loaded back from disk and run on the validation images
next to the Keras model.  Only when every format agrees (float formats to 1e-4 in
every probability, int8 on the top-1 class of at least 98% of the images) does the
staging folder become ``DIR``; otherwise it is kept as ``DIR.unverified`` and
:class:`ExportParityError` says which format failed and by how much.  The exported
files are recorded in the study's lineage tables (``autotl lineage FILE``).

:func:`load_predictor` loads any of these (or a run folder) for ``autotl predict``.

Every format is one row of a table (:class:`Format`: its name, the files it
writes, how it is written and read back, whether it is quantized, what it
needs, how the model card describes it).  ``export``, the parity check,
``load_predictor``, the model card, ``ExportResult.files`` and the files an
export owns all read the table; :func:`register_format` adds a row.

``export(..., ensemble=True)`` (``autotl export RUN_DIR --ensemble``) exports the
run's ensemble of its top trials as one model instead, and ``tta="flip"`` a model
that also averages over the mirror image; the same formats and parity checks
apply, after each member has reproduced its search score and the combined model
the score its members' predictions give (``_variant``, ``_card_variant``).
:func:`tflite_latency` times a ``.keras`` model as the TFLite format converts it.

The modules: ``_common`` (file names, tolerances, the result and error types),
``_format`` (the row type), one module per format (``_keras``, ``_savedmodel``,
``_tflite``, ``_tflite_int8``, ``_onnx`` with its two rows), ``_table`` (the rows, selection, registration),
``_run`` (the run folder and the chosen trial's model), ``_predictor``
(``load_predictor``), ``_parity`` (the checks), ``_card`` (``MODEL_CARD.md``),
``_staging`` (the output folder: checked, staged beside, swapped in whole),
``_variant`` and ``_card_variant`` (an ensemble or TTA model as the model
exported), ``_latency`` (``measure_tflite_latency``, ``measure_onnx_latency`` and ``tflite_latency``),
``_deploy_costs`` (a trial's latency, size and parameters, for objectives),
``_test_score`` (the test split's score) and ``_export`` (the steps of
``export``).
"""

from autotl.export._common import (
    CARD_FILE,
    FLOAT_TOLERANCE,
    INT8_MIN_AGREEMENT,
    KERAS_FILE,
    LABELS_FILE,
    ONNX_FILE,
    ONNX_INT8_FILE,
    PARITY_FILE,
    SAVEDMODEL_DIR,
    TFLITE_FILE,
    TFLITE_INT8_FILE,
    ExportParityError,
    ExportResult,
    Predict,
)
from autotl.export._deploy_costs import measure_deploy_costs
from autotl.export._export import export
from autotl.export._format import REPRESENTATIVE, Format, Loaded, WriteContext
from autotl.export._latency import measure_onnx_latency, measure_tflite_latency, tflite_latency
from autotl.export._parity import check_parity, verify_export
from autotl.export._predictor import load_predictor
from autotl.export._table import (
    DEFAULT_FORMATS,
    FORMATS,
    QUANTIZATIONS,
    formats,
    owned_files,
    parse_formats,
    register_format,
    unregister_format,
)
from autotl.scoring.stats import wilson_interval

__all__ = [
    "FORMATS",
    "DEFAULT_FORMATS",
    "QUANTIZATIONS",
    "FLOAT_TOLERANCE",
    "INT8_MIN_AGREEMENT",
    "ExportParityError",
    "ExportResult",
    "export",
    "check_parity",
    "verify_export",
    "load_predictor",
    "tflite_latency",
    "measure_tflite_latency",
    "measure_onnx_latency",
    "measure_deploy_costs",
    "wilson_interval",
    "parse_formats",
    "Predict",
    "Format",
    "Loaded",
    "WriteContext",
    "REPRESENTATIVE",
    "formats",
    "owned_files",
    "register_format",
    "unregister_format",
    "KERAS_FILE",
    "SAVEDMODEL_DIR",
    "TFLITE_FILE",
    "TFLITE_INT8_FILE",
    "ONNX_FILE",
    "ONNX_INT8_FILE",
    "LABELS_FILE",
    "CARD_FILE",
    "PARITY_FILE",
]
