"""Search spaces as YAML files, validated on load with errors that name the field.

The transfer-learning rules that must never be left to the sampler are
checked here: the fine-tuning rate is at least 10 times below the phase-1
rate, and the whole base is unfrozen only when the space says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Protocol, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autotl.engine.samplers import DEFAULT_SAMPLER, SAMPLERS
from autotl.errors import UsageError
from autotl.scoring.objective import DEFAULT_OBJECTIVES, OBJECTIVES, Objectives
from autotl.training.params import LR_RATIO, TrialParams

__all__ = [
    "SearchSpace",
    "load_space",
    "builtin_spaces",
    "trial_params",
    "Distributions",
    "apply_screening",
    "apply_backbone_screening",
    "TwoStage",
    "BackboneScreening",
    "Deepen",
    "apply_objectives",
    "apply_test_fraction",
    "errors_line",
    "LR_RATIO",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatRange(_Strict):
    """``{low, high, log}``; a plain number means a fixed value."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="before")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        return (
            {"low": value, "high": value}
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else value
        )

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low <= high must hold, but got (low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, but got low={self.low}")
        return self


class IntRange(_Strict):
    low: int = Field(ge=0)
    high: int = Field(ge=0)

    @model_validator(mode="before")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        return (
            {"low": value, "high": value}
            if isinstance(value, int) and not isinstance(value, bool)
            else value
        )

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low <= high must hold, but got (low={self.low}, high={self.high})")
        return self


class Head(_Strict):
    width: list[int] = Field(min_length=1)
    dropout: FloatRange

    @model_validator(mode="after")
    def _check(self) -> Head:
        if any(w < 1 for w in self.width):
            raise ValueError(f"width: every width must be >= 1, got {self.width}")
        if not (0.0 <= self.dropout.low and self.dropout.high < 1.0):
            raise ValueError(
                f"dropout: must lie in [0, 1), got low={self.dropout.low}, high={self.dropout.high}"
            )
        return self


class Phase1(_Strict):
    learning_rate: float = Field(1e-3, gt=0)
    epochs: int = Field(100, ge=1)
    patience: int = Field(5, ge=1)
    head_loss_threshold: float = Field(0.5, gt=0)


class Deepen(_Strict):
    """Widen ``unfreeze_blocks`` up to ``high`` once the search's own trials show the data needs deeper
    fine-tuning (:mod:`autotl.engine.depth` states the rule; the README measures it).

    The rule looks once ``after`` fine-tuning trials are complete: it widens when
    the best frozen head's validation accuracy is under ``weak_head`` (data far
    from the backbone's pretraining), or when the best trial so far fine-tuned the
    range's deepest blocks, kept them, and cut its validation loss by at least
    ``gain`` of the frozen head's.  Deeper boundaries are cached only when a trial
    first uses one, with the cost said before it is paid.  Once widened, a search
    with a trial budget stops before a trial that would take it past ``cost`` times
    the time the shallow range would have spent on the budget (``None``: no bound).
    """

    high: int = Field(8, ge=1)
    after: int = Field(5, ge=1)
    weak_head: float = Field(0.0, ge=0, le=1)
    gain: float = Field(0.1, ge=0, lt=1)
    cost: Optional[float] = Field(1.0, gt=0)


class Phase2(_Strict):
    unfreeze_blocks: IntRange = IntRange(low=0, high=3)
    unfreeze_all: bool = False  # unfreeze the whole base: only when the space asks
    learning_rate: FloatRange = FloatRange(low=1e-6, high=1e-4, log=True)
    epochs: int = Field(20, ge=0)
    patience: int = Field(3, ge=1)
    deepen: Optional[Deepen] = None  # off: unfreeze_blocks keeps its range

    @model_validator(mode="after")
    def _positive(self) -> Phase2:
        if self.learning_rate.low <= 0:
            raise ValueError(f"learning_rate: must be > 0, got low={self.learning_rate.low}")
        if self.deepen is not None and self.deepen.high <= self.unfreeze_blocks.high:
            raise ValueError(
                f"deepen.high must be above unfreeze_blocks.high, but got "
                f"(deepen.high={self.deepen.high}, unfreeze_blocks.high={self.unfreeze_blocks.high})"
            )
        if self.deepen is not None and self.unfreeze_all:
            raise ValueError("deepen: the whole base is unfrozen already (unfreeze_all); drop one")
        return self

    @property
    def deepest(self) -> int:
        """The most blocks any trial of this space may unfreeze (``deepen.high`` when it may widen)."""
        return self.deepen.high if self.deepen is not None else self.unfreeze_blocks.high


class Augmentation(_Strict):
    """Random flips, small rotations and zooms in phase 1 (see docs/guide/scale.md on its cost)."""

    enabled: bool = False
    views: int = Field(4, ge=1, le=32)  # cached augmented views per training image
    flip: bool = True
    rotation: float = Field(0.05, ge=0, le=0.5)  # fraction of a full turn
    zoom: float = Field(0.1, ge=0, lt=1)


class TwoStage(_Strict):
    """Two-stage search (``two_stage``; spelled ``screening`` before): try many settings cheaply, then
    fine-tune only the most promising.

    The first ``trials`` trials of the budget run phase 1 only, on cached
    features (a fraction of a second each once a backbone's cache exists);
    every later trial fine-tunes one of the ``finalists`` best phase-1
    settings (backbone, head width, dropout), in turn, with the unfreeze
    depth and fine-tuning rate drawn by the sampler.
    """

    trials: int = Field(ge=1)
    finalists: int = Field(3, ge=1)


#: The old name of :class:`TwoStage` (a space's ``screening:`` field still loads as ``two_stage:``).
Screening = TwoStage


class BackboneScreening(_Strict):
    """Backbone screening: every backbone is cached and scored on a stratified sample first, and only
    those that earn it are cached on all the data (:mod:`autotl.engine.backbone_screen`).

    ``enabled: auto`` screens when the space has at least two backbones.
    ``sample`` images (train and val in their proportions) are cached per
    backbone; a phase-1 head per width of ``head.width`` (at most three) is
    fitted on them and LogME is computed from the same features.  ``rule``
    decides: ``margin`` keeps every backbone whose sample accuracy's upper
    ``confidence`` bound reaches the best one's lower bound, ``top`` keeps the
    ``keep`` best by ``signal``; both keep at most ``keep``, and at least one.
    With ``pilot`` images (when fewer than the sample), every backbone is first
    scored on that smaller sample, and one whose accuracy's upper
    ``pilot_confidence`` bound is below the best one's lower bound there is
    dropped before its sample is cached: the first rung of successive halving,
    kept conservative (a stricter confidence, no rule but the margin) because
    its intervals are wide.  ``pilot: 0`` screens in one stage.
    """

    enabled: Union[bool, Literal["auto"]] = "auto"
    sample: int = Field(600, ge=20)
    pilot: int = Field(200, ge=0)
    pilot_confidence: float = Field(0.99, gt=0.5, lt=1.0)
    rule: Literal["margin", "top"] = "margin"
    signal: Literal["accuracy", "logme"] = "accuracy"
    keep: int = Field(3, ge=1)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)

    def active(self, backbones: int) -> bool:
        """Whether a search of ``backbones`` backbones screens them."""
        return self.enabled is True or (self.enabled == "auto" and backbones >= 2)


class Deploy(_Strict):
    """How deploy costs (``latency_ms``, ``size_mb``, ``params``) are measured: the exported format and
    quantization, and its runtime's threads, warm-up and timed runs (the median is kept): the TFLite
    interpreter for ``tflite``, ONNX Runtime for ``onnx`` (needs ``autotl[onnx]``)."""

    format: Literal["tflite", "onnx"] = "tflite"
    quantize: Literal["none", "int8"] = "none"
    threads: int = Field(1, ge=1, le=256)
    warmup: int = Field(5, ge=0, le=1000)
    runs: int = Field(30, ge=3, le=10000)


class Ensemble(_Strict):
    """An ensemble of the top trials, chosen when the search ends (``autotl ensemble`` does it any time).

    Off by default: on the data sets measured (docs/guide/ensembles.md) it did not
    reliably beat the best single model.
    On, the search keeps at least ``top_k`` trials' layers.
    """

    enabled: bool = False
    top_k: int = Field(8, ge=2, le=64)  # trials selection chooses from, best first
    tta: Literal["flip", "none"] = "flip"  # test-time augmentation measured beside it


class SearchSpace(_Strict):
    backbones: list[str] = Field(min_length=1)
    head: Head
    phase1: Phase1 = Phase1()
    phase2: Phase2 = Phase2()
    augmentation: Augmentation = Augmentation()
    two_stage: Optional[TwoStage] = None  # off: every trial may fine-tune (``screening:`` before)
    backbone_screening: BackboneScreening = BackboneScreening()  # a sample stage before full caches
    ensemble: Ensemble = Ensemble()  # off: no ensemble at the end of a search
    sampler: str = DEFAULT_SAMPLER  # one of autotl.engine.samplers.SAMPLERS
    objectives: list[str] = Field(default_factory=lambda: list(DEFAULT_OBJECTIVES), min_length=1)
    # bounds each trial must meet to count as best: at most (minimised) or at least (maximised)
    constraints: dict[str, float] = Field(default_factory=dict)
    deploy: Deploy = Deploy()
    class_weight: Optional[Literal["balanced"]] = None  # weight the loss by class, in both phases
    test_fraction: float = Field(0.0, ge=0, lt=1)  # share of training images held out as test
    # a CSV whose `path` column names files to leave out (issues.csv of `autotl doctor`), relative to this file
    exclude: Optional[str] = None
    batch_size: int = Field(32, ge=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)  # numpy, Optuna and TensorFlow all take it
    trials: int = Field(20, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _old_spelling(cls, value: Any) -> Any:
        """``screening:`` is the old name of ``two_stage:`` (a space may not give both)."""
        if isinstance(value, dict) and "screening" in value:
            if "two_stage" in value:
                raise ValueError(
                    "screening: is the old name of two_stage:; give one of them, not both"
                )
            value = {**value, "two_stage": value["screening"]}
            del value["screening"]
        return value

    @property
    def screening(self) -> Optional[TwoStage]:
        """The old name of ``two_stage``."""
        return self.two_stage

    @model_validator(mode="after")
    def _lr_rule(self) -> SearchSpace:
        ceiling = self.phase1.learning_rate / LR_RATIO
        if self.phase2.learning_rate.high > ceiling * (1 + 1e-9):
            raise ValueError(
                f"phase2.learning_rate.high must be at least {LR_RATIO:g} times below phase1.learning_rate "
                f"(<= {ceiling:g}), but got {self.phase2.learning_rate.high:g}: fine-tuning too fast destroys the pretrained weights"
            )
        if len(set(self.backbones)) != len(self.backbones):
            raise ValueError(f"backbones: names must be unique, got {self.backbones}")
        if self.sampler not in SAMPLERS:
            raise ValueError(
                f"sampler: unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}"
            )
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown:
            raise ValueError(
                f"objectives: unknown objective {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}"
            )
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives: names must be unique, got {self.objectives}")
        return self._checked_objectives()

    def _checked_objectives(self) -> SearchSpace:
        """Constraints name objectives autotl measures; a one-objective sampler gets one objective."""
        try:
            Objectives.of(self.objectives, self.constraints)
        except UsageError as exc:
            raise ValueError(f"constraints: {exc}") from None
        if self.sampler == "cmaes" and len(self.objectives) > 1:
            raise ValueError(
                f"sampler: cmaes optimises one objective, but objectives are {self.objectives}; "
                "use nsga2 or tpe for several"
            )
        return self


def builtin_spaces() -> dict[str, Path]:
    """Name to file of the spaces shipped in ``search_spaces/``."""
    folder = resources.files("autotl.search_spaces")
    return {
        p.name[: -len(".yaml")]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")
    }


def errors_line(exc: ValidationError) -> str:
    """All problems on one line, each as ``field.path: what is wrong``."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) if str(p).isprintable() else repr(p) for p in err["loc"])
        msg = (
            "unknown field (a typo?)"
            if err["type"] == "extra_forbidden"
            else err["msg"].removeprefix("Value error, ")
        )
        out.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(out)


def load_space(
    name_or_path: Union[str, Path], overrides: Optional[dict[str, Any]] = None
) -> tuple[SearchSpace, Path]:
    """Load a built-in space by name (``default``, ``fast``) or any YAML file, and validate it."""
    spaces = builtin_spaces()
    path = spaces.get(str(name_or_path)) or Path(name_or_path)
    if not path.is_file():
        raise UsageError(
            f"search space {name_or_path} not found; pass a YAML file or one of: {', '.join(sorted(spaces))}"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"search space {path}: not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise UsageError(
            f"search space {path}: must be a mapping of fields (backbones, head, phase1, ...), got {type(raw).__name__}"
        )
    raw.update(overrides or {})
    try:
        return SearchSpace.model_validate(raw), path
    except ValidationError as exc:
        raise UsageError(f"search space {path}: {errors_line(exc)}") from None


class Suggests(Protocol):
    """What :func:`trial_params` asks a point of: Optuna's ``Trial`` (or ``FixedTrial``), or an adapter."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int) -> int: ...


class Distributions:
    """Stands in for an Optuna trial in :func:`trial_params` and records the distribution each parameter
    gets: what an Optuna search of a space uses (the keras-tuner study's copy, a resumed study's check)."""

    def __init__(self) -> None:
        self.distributions: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        from optuna.distributions import CategoricalDistribution

        self.distributions[name] = CategoricalDistribution(list(choices))
        return choices[0]

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        from optuna.distributions import FloatDistribution

        self.distributions[name] = FloatDistribution(low, high, log=log)
        return low

    def suggest_int(self, name: str, low: int, high: int) -> int:
        from optuna.distributions import IntDistribution

        self.distributions[name] = IntDistribution(low, high)
        return low


def trial_params(
    trial: Suggests, space: SearchSpace, screen: bool = False, deepest: Optional[int] = None
) -> TrialParams:
    """Ask ``trial`` for one point of ``space``: an Optuna trial (or ``optuna.trial.FixedTrial``), or anything
    with ``suggest_categorical``, ``suggest_float`` and ``suggest_int`` (the keras-tuner engine's adapter).

    One mapping from a space to the trainer's parameters, for every engine.  A
    two-stage phase-1 trial (``screen``) asks only for the backbone and head: it runs
    phase 1 alone, so it draws no fine-tuning settings.  ``deepest`` is the top of
    ``unfreeze_blocks`` once :mod:`autotl.engine.depth` widened it; the boundaries
    cached in phase 1's pass stay the space's own range (deeper ones are cached when used).
    """
    p2 = space.phase2
    top = max(p2.unfreeze_blocks.high, min(deepest or 0, p2.deepest))
    return TrialParams(
        backbone=trial.suggest_categorical("backbone", list(space.backbones)),
        head_width=trial.suggest_categorical("head_width", list(space.head.width)),
        dropout=trial.suggest_float("dropout", space.head.dropout.low, space.head.dropout.high),
        unfreeze_blocks=0
        if screen
        else trial.suggest_int("unfreeze_blocks", p2.unfreeze_blocks.low, top),
        unfreeze_all=p2.unfreeze_all and not screen,
        finetune_lr=p2.learning_rate.low
        if screen
        else trial.suggest_float(
            "finetune_lr", p2.learning_rate.low, p2.learning_rate.high, log=p2.learning_rate.log
        ),
        phase1_lr=space.phase1.learning_rate,
        phase1_epochs=space.phase1.epochs,
        phase1_patience=space.phase1.patience,
        phase2_epochs=p2.epochs,
        phase2_patience=p2.patience,
        head_loss_threshold=space.phase1.head_loss_threshold,
        batch_size=space.batch_size,
        seed=space.seed,
        prefetch_blocks=0 if p2.unfreeze_all else p2.unfreeze_blocks.high,
        class_weight=space.class_weight,
        prefetch_min_blocks=max(1, p2.unfreeze_blocks.low),
    )


def apply_objectives(space: SearchSpace, objectives: Optional[Any]) -> SearchSpace:
    """``space`` searching ``objectives`` instead (a list, or ``"accuracy,latency_ms"``); ``None`` keeps the space's.

    The space's checks run again, so a constraint or sampler that no longer fits is refused in one line.
    """
    if objectives is None:
        return space
    names = objectives.split(",") if isinstance(objectives, str) else list(objectives)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise UsageError(f"--objectives: give at least one; choose from {', '.join(OBJECTIVES)}")
    try:
        return SearchSpace.model_validate({**space.model_dump(), "objectives": names})
    except ValidationError as exc:
        raise UsageError(f"--objectives: {errors_line(exc)}") from None


def apply_test_fraction(space: SearchSpace, fraction: Optional[float]) -> SearchSpace:
    """``space`` holding out ``fraction`` of the training images as the test split; ``None`` keeps the space's."""
    if fraction is None:
        return space
    try:
        return SearchSpace.model_validate({**space.model_dump(), "test_fraction": fraction})
    except ValidationError as exc:
        raise UsageError(f"--test-fraction: {errors_line(exc)}") from None


def apply_screening(
    space: SearchSpace, screen: Optional[int], finalists: Optional[int]
) -> SearchSpace:
    """``space`` with a two-stage search of ``screen`` phase-1-only trials and ``finalists`` (``screen=0``: off).

    ``None`` keeps the space's own setting; the space's validation states the limits.
    """
    if screen is None:
        if finalists is None:
            return space
        if space.two_stage is None:
            raise UsageError(
                "--finalists needs a two-stage search: add --two-stage N (or two_stage in the space file)"
            )
        screen = space.two_stage.trials
    if screen < 0:
        raise UsageError(f"--two-stage must be 0 (off) or more, got {screen}")
    if screen == 0:
        return space.model_copy(update={"two_stage": None})
    current = space.two_stage.model_dump() if space.two_stage is not None else {}
    changes = {"trials": screen, **({"finalists": finalists} if finalists is not None else {})}
    try:
        two_stage = TwoStage(**{**current, **changes})
    except ValidationError as exc:
        raise UsageError(f"--two-stage/--finalists: {errors_line(exc)}") from None
    return space.model_copy(update={"two_stage": two_stage})


def apply_backbone_screening(
    space: SearchSpace, enabled: Optional[str], sample: Optional[int]
) -> SearchSpace:
    """``space`` with backbone screening ``enabled`` (``"on"``, ``"off"``, ``"auto"``) on ``sample`` images;
    ``None`` keeps the space's own setting."""
    changes: dict[str, Any] = {}
    if enabled is not None:
        flags = {"on": True, "off": False, "auto": "auto", True: True, False: False}
        if enabled not in flags:
            raise UsageError(f"--backbone-screening must be on, off or auto, got {enabled!r}")
        changes["enabled"] = flags[enabled]
    if sample is not None:
        changes["sample"] = sample
    if not changes:
        return space
    try:
        screening = BackboneScreening(**{**space.backbone_screening.model_dump(), **changes})
    except ValidationError as exc:
        raise UsageError(f"--backbone-screening/--screening-sample: {errors_line(exc)}") from None
    return space.model_copy(update={"backbone_screening": screening})
