"""The search's options, declared once: name, type, default, help and validation.

:class:`SearchOptions` is the one place a search option is written down.  The
command line's ``autotl search`` flags (:mod:`autotl.cli`), the keywords of
``autotl.search(...)`` (:mod:`autotl.api`), the configuration the extra
workers read, and the record kept in the run folder (``run.json``) are all
derived from it, so an option is added here and nowhere else.

::

    from autotl.engine.options import SearchOptions

    options = SearchOptions.parse(data="images/", trials=20, backbones=["mobilenet-0.25"])
    options.heartbeat        # 30, the default
    SearchOptions.parse(heartbeat=0)   # UsageError: heartbeat must be at least 1 second, got 0

A mistake is one line (:class:`autotl.errors.UsageError`), every problem named.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from autotl.engine.failures import BACKBONE_FAILURES, MAX_FAILURES
from autotl.engine.space import BackboneScreening, SearchSpace, TwoStage
from autotl.errors import UsageError
from autotl.scoring.objective import OBJECTIVES

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo
    from pydantic_core import ErrorDetails

__all__ = ["SearchOptions", "Flag", "GROUPS"]

#: The sections of ``autotl search --help``, in order.
GROUPS = {
    "data": "data and run folder",
    "search": "what to search",
    "study": "the study and its workers",
    "failures": "failures",
    "scale": "large data sets and shared machines",
    "plugins": "backbones, weights and plugins",
}


@dataclass(frozen=True)
class Flag:
    """How an option is written on the command line: ``--field-name METAVAR`` unless said otherwise."""

    metavar: Optional[str] = None
    name: Optional[str] = None  # the flag, when it is not ``--`` and the field's name with dashes
    group: str = "search"
    positional: bool = False  # ``DATA_DIR``: an optional positional argument
    aliases: tuple[str, ...] = ()  # older spellings the command line still takes
    repeat: bool = False  # given once per value (``--backbone a --backbone b``)

    def flag(self, field: str) -> str:
        return self.name or "--" + field.replace("_", "-")


def _fspath(value: object) -> object:
    """A path given as ``pathlib.Path`` is kept as the string it names (JSON-able, for workers and records)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _items(value: object) -> object:
    """``"a,b"`` or ``["a", "b"]`` -> ``("a", "b")``: a list option written once on the command line."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return value


def _at_least(low: int, unit: str = "") -> AfterValidator:
    def check(value: Optional[float]) -> Optional[float]:
        if value is not None and value < low:
            raise ValueError(f"must be at least {low}{unit}, got {value}")
        return value

    return AfterValidator(check)


def _byte_size(value: object) -> object:
    """``"20GB"``, ``"500 MiB"`` or a number of bytes (see ``autotl.training.cache.parse_bytes``), positive."""
    from autotl.training.cache import parse_bytes

    if not isinstance(value, (str, int)) or isinstance(value, bool):
        return value
    try:
        size = parse_bytes(value)
    except UsageError:
        raise ValueError(f"must be a size like 20GB, 500MB or 1.5TB, got {value!r}") from None
    if size is not None and size <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return size


def _resolved(value: Optional[str]) -> Optional[str]:
    """An absolute path: extra workers, started elsewhere, must find the same folder."""
    return str(os.path.abspath(os.path.expanduser(value))) if value else None


#: What the options whose own parser reads text accept, as ``autotl.search``'s signature shows it.
_ACCEPTS: dict[Callable[[object], object], object] = {
    _items: Union[str, Sequence[str]],
    _byte_size: Union[int, str],
}
Path_ = Annotated[Optional[str], BeforeValidator(_fspath)]
Names = Annotated[tuple[str, ...], BeforeValidator(_items)]


class SearchOptions(BaseModel):
    """Everything ``autotl search`` / ``autotl.search(...)`` takes, checked; ``None`` means "see the help"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # data and run folder
    data: Annotated[Path_, Flag("DATA_DIR", positional=True, group="data")] = Field(
        None,
        description="folder of class subfolders (with train/ and val/ inside, they are used as they are)",
    )
    sample: Annotated[Optional[str], Flag("NAME", group="data")] = Field(
        None, description="use a built-in sample data set instead of DATA_DIR (e.g. digits)"
    )
    out: Annotated[Path_, Flag("RUN_DIR", group="data")] = Field(
        None, description="run folder (default: runs/<data name>)"
    )
    # what to search
    space: Annotated[Union[str, SearchSpace], BeforeValidator(_fspath), Flag("NAME_OR_FILE")] = (
        Field(
            "default", description="search space: 'default', 'fast', a YAML file or a SearchSpace"
        )
    )
    trials: Annotated[Optional[int], _at_least(1), Flag("N")] = Field(
        None, description="finished trials the study should hold in total (default: the space's)"
    )
    backbones: Annotated[Names, Flag("NAME", name="--backbone", repeat=True)] = Field(
        (), description="search only these backbones (repeatable)"
    )
    objectives: Annotated[Optional[Names], Flag("LIST")] = Field(
        None,
        description="comma-separated objectives, e.g. accuracy,latency_ms (overrides the space's; "
        f"{', '.join(OBJECTIVES)})",
    )
    screen: Annotated[Optional[int], Flag("N", name="--two-stage", aliases=("--screen",))] = Field(
        None,
        description="two-stage search: the first N trials try settings with phase 1 only, later trials "
        "fine-tune the best (overrides the space's two_stage; 0 turns it off; --screen is its old name)",
    )
    finalists: Annotated[Optional[int], Flag("K")] = Field(
        None,
        description="with --two-stage: how many phase-1 settings are fine-tuned, in turn "
        f"(default {TwoStage.model_fields['finalists'].default})",
    )
    backbone_screening: Optional[Literal["on", "off", "auto"]] = Field(
        None,
        description="score every backbone on a sample first and cache only those that earn it on all the "
        "data (default: the space's backbone_screening, auto: on with 2+ backbones)",
    )
    screening_sample: Annotated[Optional[int], Flag("N")] = Field(
        None,
        description="images in backbone screening's stratified sample (default: the space's, "
        f"{BackboneScreening.model_fields['sample'].default})",
    )
    test_fraction: Annotated[Optional[float], Flag("F")] = Field(
        None,
        description="share of each class's training images held out as the test split, scored once "
        "after the search (overrides the space's test_fraction; a test/ folder wins)",
    )
    engine: Literal["optuna", "keras-tuner"] = Field(
        "optuna",
        description="search engine; keras-tuner keeps its project in RUN_DIR/keras_tuner",
    )
    tuner: Literal["bayesian", "random", "hyperband"] = Field(
        "bayesian", description="keras-tuner's tuner, with --engine keras-tuner"
    )
    exclude: Annotated[Path_, Flag("CSV", group="data")] = Field(
        None,
        description="train without the files this CSV's path column lists (issues.csv of `autotl doctor`); "
        "the data folder is never changed",
    )
    # the study and its workers
    storage: Annotated[Optional[str], Flag("URL", group="study")] = Field(
        None, description="Optuna storage URL (default: sqlite in the run folder)"
    )
    study_name: Annotated[str, Flag(group="study")] = Field(
        "autotl", description="study name in the storage"
    )
    timeout: Annotated[Optional[float], Flag("SECONDS", group="study")] = Field(
        None, description="stop starting new trials after this long"
    )
    keep_models: Annotated[int, _at_least(1), Flag("K", group="study")] = Field(
        3, description="keep the saved models of the K best trials"
    )
    workers: Annotated[int, _at_least(1), Flag("N", group="study")] = Field(
        1, description="worker processes on this machine, sharing the study"
    )
    gpus: Annotated[Names, Flag("0,1,...", group="study")] = Field(
        (), description="give worker i the GPU gpus[i % len(gpus)] (CUDA_VISIBLE_DEVICES)"
    )
    heartbeat: Annotated[int, _at_least(1, " second"), Flag("SECONDS", group="study")] = Field(
        30,
        description="worker heartbeat; a worker silent for 4 is declared dead and its trial retried",
    )
    report: Annotated[bool, Flag(name="--no-report", group="study")] = Field(
        True,
        description="whether the report (report.html, .md, .json) is written when the search ends; "
        "--no-report leaves it to `autotl report RUN_DIR`",
    )
    mlflow: Annotated[Optional[str], Flag("URI", group="study")] = Field(
        None,
        description="log each trial to this MLflow tracking server as it finishes, and register the best "
        "model (pip install 'autotl[mlflow]')",
    )
    # failures
    max_failures: Annotated[int, _at_least(1), Flag("N", group="failures")] = Field(
        MAX_FAILURES,
        description=f"stop after N failed trials in a row; a backbone failing {BACKBONE_FAILURES} "
        "times in a row is dropped",
    )
    # large data sets and shared machines
    decode_workers: Annotated[
        Optional[int], _at_least(0, " (0: decode in this process)"), Flag("N", group="scale")
    ] = Field(
        None, description="processes that decode images (default: the cores; 0: in this process)"
    )
    cache_dir: Annotated[Path_, AfterValidator(_resolved), Flag("DIR", group="scale")] = Field(
        None,
        description="where the feature cache lives (default: RUN_DIR/cache); runs on the same data can share it",
    )
    cache_budget: Annotated[
        Optional[int], BeforeValidator(_byte_size), Flag("SIZE", group="scale")
    ] = Field(
        None,
        description="most bytes the feature cache may hold, e.g. 20GB (default: the disk's free space); "
        "a block boundary that does not fit is not cached and fine-tuning from it streams from the images",
    )
    cache_dtype: Annotated[Literal["float16", "float32"], Flag(group="scale")] = Field(
        "float16", description="the feature cache's entries: float16, or float32 for exact ones"
    )
    mixed_precision: Annotated[bool, Flag(group="scale")] = Field(
        False,
        description="run the cache's forward pass in float16 (for GPUs; the features then match "
        "the float32 model less closely)",
    )
    artifacts: Annotated[Optional[str], Flag("URL", group="scale")] = Field(
        None,
        description="where trials' layers, best models and exports go: s3://bucket/prefix (endpoint from "
        "AWS_ENDPOINT_URL) or a shared folder (default: RUN_DIR/artifacts, or what the study records)",
    )
    # backbones, weights and plugins
    weights_dir: Annotated[Path_, Flag("DIR", group="plugins")] = Field(
        None,
        description="folder of Keras weight files (default: $AUTOTL_WEIGHTS_DIR, else Keras "
        "downloads ImageNet weights)",
    )
    weights: Annotated[Optional[Literal["imagenet", "none"]], Flag(group="plugins")] = Field(
        None, description="'none' starts from random weights (for tests)"
    )
    plugins: Annotated[Names, Flag("MODULE", name="--plugin", group="plugins", repeat=True)] = (
        Field((), description="import MODULE as an autotl plugin (repeatable)")
    )

    @model_validator(mode="after")
    def _engine_fits(self) -> SearchOptions:
        if self.engine == "keras-tuner" and (
            self.timeout is not None or self.workers > 1 or self.gpus
        ):
            raise ValueError(
                "timeout, workers and gpus are the Optuna engine's; with engine keras-tuner the search "
                "runs in one process and lives in RUN_DIR/keras_tuner"
            )
        return self

    @classmethod
    def parse(cls, **values: object) -> SearchOptions:
        """The options from keyword arguments; a mistake is one :class:`UsageError` line naming each field.

        An unknown name is a ``TypeError``, as for any Python function.
        """
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"search() got an unexpected keyword argument {unknown[0]!r}")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise UsageError(_error_lines(exc)) from None

    def record(self) -> dict[str, Any]:
        """The options as JSON, for the run folder's record and the extra workers' configuration."""
        return self.model_dump(mode="json")

    def but(self, **changes: object) -> SearchOptions:
        """These options with ``changes``, checked again."""
        return SearchOptions.parse(**{**dict(self), **changes})


def flags() -> dict[str, Flag]:
    """Every option's :class:`Flag`, in declaration order."""
    return {name: _flag(info) for name, info in SearchOptions.model_fields.items()}


def _flag(info: FieldInfo) -> Flag:
    return next((m for m in info.metadata if isinstance(m, Flag)), Flag())


def accepted(name: str) -> object:
    """The type a caller may pass for option ``name`` (what ``autotl.search``'s signature shows): the
    model's, or what its own parser reads (a path, ``"a,b"`` or a list, ``"20GB"`` or bytes)."""
    info = SearchOptions.model_fields[name]
    nested = [m for a in get_args(info.annotation) for m in getattr(a, "__metadata__", ())]
    for meta in [*info.metadata, *nested]:
        if isinstance(meta, BeforeValidator) and meta.func is _fspath:
            return Union[info.annotation, os.PathLike[str]]
        if isinstance(meta, BeforeValidator) and meta.func in _ACCEPTS:
            kind = _ACCEPTS[meta.func]
            return Optional[kind] if info.default is None else kind
    return info.annotation


def choices(name: str) -> tuple[str, ...]:
    """The values a ``Literal`` option takes (``engine``: optuna, keras-tuner), else ()."""
    return _literal(SearchOptions.model_fields[name].annotation)


def _literal(annotation: object) -> tuple[str, ...]:
    if get_origin(annotation) is Literal:
        return tuple(str(a) for a in get_args(annotation))
    for arg in get_args(annotation):
        found = _literal(arg)
        if found:
            return found
    return ()


def _error_line(error: ErrorDetails) -> str:
    """One problem: ``heartbeat must be at least 1 second, got 0``, ``unknown engine 'grid'; choose from ...``."""
    name = str(error["loc"][0]) if error["loc"] else ""
    got = error.get("input")
    if error["type"] == "literal_error" and name in SearchOptions.model_fields:
        return f"unknown {name} {got!r}; choose from {', '.join(choices(name))}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error":
        return f"{name} {message}" if name else message
    return f"{name}: {message[:1].lower()}{message[1:]}, got {got!r}"


def _error_lines(exc: ValidationError) -> str:
    """Every field's first problem, on one line (a union tries each type: one line per field is enough)."""
    seen: dict[str, str] = {}
    for error in exc.errors():
        seen.setdefault(str(error["loc"][:1]), _error_line(error))
    return "; ".join(seen.values())
