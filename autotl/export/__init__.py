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

The modules: ``_common`` (file names, tolerances, the result and error types),
``_run`` (the run folder and the chosen trial's model), ``_savedmodel`` and
``_tflite`` (each format written and read back), ``_predictor``
(``load_predictor``), ``_parity`` (the checks), ``_card`` (``MODEL_CARD.md``),
and ``_export`` (staging, verifying, installing).
"""

from autotl.export._common import (
    CARD_FILE,
    FLOAT_TOLERANCE,
    FORMATS,
    INT8_MIN_AGREEMENT,
    KERAS_FILE,
    LABELS_FILE,
    PARITY_FILE,
    QUANTIZATIONS,
    SAVEDMODEL_DIR,
    TFLITE_FILE,
    TFLITE_INT8_FILE,
    ExportParityError,
    ExportResult,
    Predict,
)
from autotl.export._export import export, parse_formats
from autotl.export._parity import check_parity, verify_export
from autotl.export._predictor import load_predictor
from autotl.stats import wilson_interval

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "FLOAT_TOLERANCE",
    "INT8_MIN_AGREEMENT",
    "ExportParityError",
    "ExportResult",
    "export",
    "check_parity",
    "verify_export",
    "load_predictor",
    "wilson_interval",
    "parse_formats",
    "Predict",
    "KERAS_FILE",
    "SAVEDMODEL_DIR",
    "TFLITE_FILE",
    "TFLITE_INT8_FILE",
    "LABELS_FILE",
    "CARD_FILE",
    "PARITY_FILE",
]
