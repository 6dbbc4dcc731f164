"""The table of export formats: one row per format, in the order they are written, checked and listed.

A built-in format is one module defining ``FORMAT`` and one line in
``_BUILT_IN``; a format from elsewhere is one :func:`register_format` call.
``FORMATS`` and ``QUANTIZATIONS`` are live views of the table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from autotl.errors import UsageError
from autotl.export import _keras, _onnx, _savedmodel, _tflite, _tflite_int8
from autotl.export._common import COMMON_FILES
from autotl.export._format import Format

_BUILT_IN: tuple[Format, ...] = (
    _keras.FORMAT,
    _savedmodel.FORMAT,
    _tflite.FORMAT,
    _tflite_int8.FORMAT,
    _onnx.FORMAT,
    _onnx.FORMAT_INT8,
)
_TABLE: dict[str, Format] = {f.name: f for f in _BUILT_IN}


def register_format(fmt: Format, *, replace: bool = False) -> Format:
    """Add ``fmt`` to the table (after the others); its name and files must be new unless ``replace``."""
    if not isinstance(fmt, Format):
        raise TypeError(f"register_format takes an autotl.export.Format, got {type(fmt).__name__}")
    if fmt.name in _TABLE and not replace:
        raise ValueError(f"export format {fmt.name!r} is already registered")
    taken = {
        name: other.name
        for other in _TABLE.values()
        if other.name != fmt.name
        for name in other.files
    }
    clash = [f for f in fmt.files if f in taken or f in COMMON_FILES]
    if clash:
        owner = taken.get(clash[0], "every export")
        raise ValueError(f"export format {fmt.name!r} writes {clash[0]}, which {owner} writes")
    _TABLE[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    """Remove a registered format (built-in ones too); unknown names are ignored."""
    _TABLE.pop(name, None)


def formats() -> tuple[Format, ...]:
    """Every row, in table order."""
    return tuple(_TABLE.values())


def get_format(name: str) -> Format:
    return _TABLE[name]


class _Names(Sequence[str]):
    """A live, tuple-like view of one column of the table (each value once, in table order)."""

    def __init__(self, column: str, rows: str = "all") -> None:
        self._column, self._rows = column, rows

    def _values(self) -> tuple[str, ...]:
        rows = [f for f in _TABLE.values() if self._rows == "all" or f.default]
        return tuple(dict.fromkeys(v for f in rows if (v := getattr(f, self._column))))

    def __getitem__(self, i: Any) -> Any:
        return self._values()[i]

    def __len__(self) -> int:
        return len(self._values())

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return repr(self._values())


#: Every ``--format`` word, and the ones exported when none is named.
FORMATS: Sequence[str] = _Names("selector")
DEFAULT_FORMATS: Sequence[str] = _Names("selector", rows="default")
#: Every ``--quantize`` value.
QUANTIZATIONS: Sequence[str] = _Names("quantize")


def parse_formats(formats: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--format`` words (a comma-separated string or a list), checked against the table, each once."""
    if formats is None:
        return tuple(DEFAULT_FORMATS)
    items = [
        f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)
    ]
    items = [f for f in items if f]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        what = f"unknown export format {unknown[0]!r}" if unknown else "no export format given"
        raise UsageError(f"{what}; choose from {', '.join(FORMATS)} (comma-separated)")
    return tuple(dict.fromkeys(items))


def select(selectors: Sequence[str], quantize: Optional[str]) -> tuple[Format, ...]:
    """The rows an export writes: those ``--format`` names, quantized ones only when ``--quantize`` names them."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UsageError(
            f"unknown quantization {quantize!r}; choose from {', '.join(QUANTIZATIONS)}"
        )
    if quantize is not None:
        hosts = [f.selector for f in _TABLE.values() if f.quantize == quantize]
        if not set(hosts) & set(selectors):
            hosts = list(dict.fromkeys(hosts))
            raise UsageError(
                f"--quantize {quantize} quantizes the {' or '.join(hosts)} model; add "
                f"{' or '.join(hosts)} to --format"
            )
    rows = tuple(
        f
        for f in _TABLE.values()
        if f.selector in selectors and (f.quantize is None or f.quantize == quantize)
    )
    for row in rows:  # a missing optional extra is one line, before anything is written
        if row.requires is not None:
            row.requires()
    return rows


def owned_files() -> tuple[str, ...]:
    """Every file or folder an export may write: what replacing an earlier export removes, and nothing else."""
    return tuple(dict.fromkeys([n for f in _TABLE.values() for n in f.files] + list(COMMON_FILES)))


def recognise(path: Path) -> Optional[Format]:
    """The first row that recognises ``path`` as its format, or None."""
    return next((f for f in _TABLE.values() if f.recognises(path)), None)


def titles() -> str:
    """What a model path may be, for messages: "a .keras file, a SavedModel folder or a .tflite file"."""
    names = list(dict.fromkeys(f.title for f in _TABLE.values()))
    return ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1]
