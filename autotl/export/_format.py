"""What one export format is: one frozen row that says what it writes, how, how it is read back and checked.

Every format autotl exports is one module defining one :class:`Format`, listed
in the table (``_table``).  ``export``, the parity check, ``load_predictor``,
the model card, ``ExportResult.files`` and the files an export owns all read
that table, so a new format is one module and one row (``_onnx`` is a built-in
example: two rows, float and int8, on one converter)::

    from autotl.export import Format, Loaded, register_format

    def write(model, ctx):  # into the staging folder ctx.folder
        (ctx.folder / "model.mlpackage").write_bytes(to_coreml(model, ctx.input_size))

    def load(path):  # read back from disk: what parity compares and `autotl predict` runs
        return Loaded(predict=coreml_predictor(path))

    register_format(Format(
        name="coreml", files=("model.mlpackage",), write=write, load=load,
        recognises=lambda p: p.suffix == ".mlpackage", title="a Core ML package",
        description="Core ML, for Apple devices",
    ))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotl.export._common import Predict

#: What a format may need from the export besides the model (``Format.needs``).
REPRESENTATIVE = "representative_images"
NEEDS = (REPRESENTATIVE,)


@dataclass(frozen=True)
class Loaded:
    """A format read back from disk.

    ``predict`` is what ``autotl predict`` runs.  ``checks`` are what parity
    compares with the Keras model, by the name ``parity.json`` shows (default:
    the format's own name and ``predict``); a SavedModel checks both its
    signatures.  ``facts`` go beside the parity numbers (a TFLite file's dtypes
    and quantization); ``class_names`` are the names stored inside the format,
    if it stores them.
    """

    predict: Predict
    checks: Mapping[str, Predict] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    class_names: Optional[list[str]] = None


@dataclass(frozen=True)
class WriteContext:
    """What a format's ``write`` gets besides the Keras model: where to write and what it may need."""

    folder: Path  # the staging folder; a format writes its ``files`` here
    model_file: Path  # the trial's .keras file, as the search saved it
    class_names: list[str]
    input_size: tuple[int, int]  # (height, width) the model resizes every image to
    labels_file: Path  # labels.txt, already written in ``folder``
    #: Training images resized to ``input_size`` (float32 0..255), when a format ``needs`` them.
    representative: Optional[np.ndarray] = None


@dataclass(frozen=True)
class Format:
    """One row of the export table.

    ``name`` keys the format in ``parity.json`` and ``ExportResult.files``;
    ``selector`` is the ``--format`` word that picks it (default ``name``), and
    a row with ``quantize`` is picked only when ``--quantize`` names it too: it
    is then checked by top-1 agreement (``INT8_MIN_AGREEMENT``), every other
    row within ``FLOAT_TOLERANCE``.  ``files`` are the files or folders it
    writes (the first is the one ``load`` reads, ``recognises`` spots and the
    lineage tables record, unless ``lineage_files`` names others).  ``needs``
    lists what it needs from the export (``REPRESENTATIVE``); ``usage(size,
    facts)`` says in the model card how to call it.  ``default`` rows are
    exported when no format is named.  ``requires()`` raises a one-line
    UsageError when the format cannot be written or read here (an optional
    extra is not installed); it is asked before an export starts.
    """

    name: str
    files: tuple[str, ...]
    write: Callable[[Any, WriteContext], None]
    load: Callable[[Path], Loaded]
    recognises: Callable[[Path], bool]
    title: str  # "a .tflite file": how messages name a path of this format
    description: str  # one line for the model card's list of formats
    selector: str = ""
    quantize: Optional[str] = None
    needs: frozenset[str] = frozenset()
    usage: Optional[Callable[[tuple[int, int], Mapping[str, Any]], str]] = None
    lineage_files: tuple[str, ...] = ()
    default: bool = True
    requires: Optional[Callable[[], None]] = None

    def __post_init__(self) -> None:
        if not self.selector:
            object.__setattr__(self, "selector", self.name)
        if not self.files:
            raise ValueError(f"export format {self.name!r} writes no files")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(
                f"export format {self.name!r} needs {sorted(unknown)}; known: {', '.join(NEEDS)}"
            )

    @property
    def quantized(self) -> bool:
        """Checked by top-1 agreement rather than probability differences."""
        return self.quantize is not None

    @property
    def main(self) -> str:
        """The file or folder ``load`` reads."""
        return self.files[0]

    def recorded(self) -> tuple[str, ...]:
        """The files the lineage tables record (``autotl lineage FILE`` finds them)."""
        return self.lineage_files or self.files

    def checks(self, loaded: Loaded) -> Mapping[str, Predict]:
        """What parity compares: the loaded format's ``checks``, or its ``predict`` under its name."""
        return loaded.checks or {self.name: loaded.predict}
