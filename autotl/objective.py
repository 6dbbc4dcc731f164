"""What a search optimises: each objective defined once, and the one order that says "best".

An :class:`Objective` is a name a user writes (``accuracy``), the metric a
trial records (``val_accuracy``), its direction and how it is shown.  The
study's :class:`Objectives` are a list of them in order: they give Optuna its
``directions``, turn a trial's metrics into the values its objective function
returns, read those values back from any trial, and rank trials for the
search (which trials keep their layers, which is the best model), the
keras-tuner engine, the leaderboards, the report and export.

A new objective is one entry in :data:`OBJECTIVES` (plus, if the trainer does
not yet record its metric, the code that measures it).  This module imports
nothing heavy: Optuna's trials are read by duck typing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from autotl.errors import UsageError

__all__ = [
    "Objective",
    "Objectives",
    "OBJECTIVES",
    "DEFAULT_OBJECTIVES",
    "TIE_BREAK",
    "get_objective",
    "trial_metrics",
    "complete_trials",
    "ranked_trials",
    "best_trial",
]

MAXIMIZE, MINIMIZE = "maximize", "minimize"
#: The metric that breaks ties between equal objective values (lower is better), then the earlier trial wins.
TIE_BREAK = "val_loss"


@dataclass(frozen=True)
class Objective:
    """One objective: ``name`` as written in a space, the ``metric`` trials record, and its direction."""

    name: str
    metric: str
    direction: str
    label: str  # "validation accuracy": in sentences
    short: str  # "val acc": in table headers
    fmt: str = ".4f"

    def signed(self, value: float) -> float:
        """``value`` on a scale where smaller is better (for sort keys)."""
        return -value if self.direction == MAXIMIZE else value

    def format(self, value: Optional[float]) -> str:
        return "-" if value is None else format(value, self.fmt)

    def better(self, a: Optional[float], b: Optional[float]) -> bool:
        """Whether ``a`` is strictly better than ``b`` (a missing value is never better)."""
        if a is None:
            return False
        return b is None or self.signed(a) < self.signed(b)


#: Every objective autotl knows, by the name a space or ``--objectives`` uses.
OBJECTIVES: dict[str, Objective] = {
    "accuracy": Objective("accuracy", "val_accuracy", MAXIMIZE, "validation accuracy", "val acc"),
}
DEFAULT_OBJECTIVES: tuple[str, ...] = ("accuracy",)


def get_objective(name: str) -> Objective:
    """The objective called ``name``; a one-line UsageError names the known ones otherwise."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise UsageError(
            f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}"
        ) from None


def _value(trial: Any) -> Optional[list[float]]:
    """A trial's objective values (``values``), or None (running, failed, or an engine's record)."""
    values = getattr(trial, "values", None)
    if values is None:
        try:
            value = getattr(trial, "value", None)  # a FrozenTrial of several objectives raises here
        except Exception:
            value = None
        values = None if value is None else [value]
    return list(values) if values else None


def trial_metrics(trial: Any) -> dict[str, float]:
    """The metrics a trial recorded: its ``metrics`` user attribute (autotl's trainer writes it).

    Trials of runs made before that attribute existed have their value and a
    ``val_loss`` attribute; those are read as ``val_accuracy`` and ``val_loss``.
    ``trial`` is an Optuna ``FrozenTrial`` or a dict with ``user_attrs``.
    """
    attrs = (
        trial.get("user_attrs", {})
        if isinstance(trial, Mapping)
        else getattr(trial, "user_attrs", {})
    )
    attrs = attrs or {}
    out = {
        k: float(v) for k, v in (attrs.get("metrics") or {}).items() if isinstance(v, (int, float))
    }
    if TIE_BREAK not in out and isinstance(attrs.get("val_loss"), (int, float)):
        out[TIE_BREAK] = float(attrs["val_loss"])
    values = trial.get("values") if isinstance(trial, Mapping) else _value(trial)
    if "val_accuracy" not in out and values and len(values) == 1:
        out["val_accuracy"] = float(values[0])
    return out


@dataclass(frozen=True)
class Objectives:
    """The study's objectives, in order (the first is the primary one, shown first everywhere)."""

    items: tuple[Objective, ...]

    @classmethod
    def of(cls, names: Iterable[str] | None = None) -> Objectives:
        """From names (default: accuracy); unknown or repeated names are a UsageError."""
        names = list(names or DEFAULT_OBJECTIVES)
        if len(set(names)) != len(names):
            raise UsageError(f"objectives must be distinct, got {names}")
        return cls(tuple(get_objective(n) for n in names))

    @classmethod
    def of_study(cls, study: Any) -> Objectives:
        """The objectives a study was created with (its ``objectives`` attribute; accuracy for older studies)."""
        return cls.of((getattr(study, "user_attrs", None) or {}).get("objectives"))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.items]

    @property
    def directions(self) -> list[str]:
        """Optuna's ``directions``."""
        return [o.direction for o in self.items]

    @property
    def primary(self) -> Objective:
        return self.items[0]

    def values(self, metrics: Mapping[str, float]) -> list[float]:
        """What the objective function returns for a trial that recorded ``metrics``."""
        missing = [o.metric for o in self.items if o.metric not in metrics]
        if missing:
            raise KeyError(f"the trial recorded no {', '.join(missing)}")
        return [float(metrics[o.metric]) for o in self.items]

    def value(self, trial: Any, objective: Optional[Objective] = None) -> Optional[float]:
        """A trial's value of ``objective`` (default: the primary one), or None if it has none."""
        found = trial_metrics(trial).get((objective or self.primary).metric)
        return None if found is None or not math.isfinite(found) else found

    def key(self, metrics: Mapping[str, float], number: int) -> tuple[float, ...]:
        """The sort key of "best first": each objective in order, then lower validation loss, then the earlier trial.

        A missing value sorts last.
        """
        parts = []
        for o in self.items:
            v = metrics.get(o.metric)
            parts.append(math.inf if v is None or not math.isfinite(v) else o.signed(v))
        loss = metrics.get(TIE_BREAK)
        parts.append(math.inf if loss is None else loss)
        return (*parts, number)

    def trial_key(self, trial: Any) -> tuple[float, ...]:
        number = trial["number"] if isinstance(trial, Mapping) else trial.number
        return self.key(trial_metrics(trial), number)

    def rank(self, trials: Sequence[Any]) -> list[Any]:
        """The scored trials among ``trials``, best first (states are the caller's to filter)."""
        scored = [t for t in trials if self.value(t) is not None]
        return sorted(scored, key=self.trial_key)

    def best(self, trials: Sequence[Any]) -> Any:
        ranked = self.rank(trials)
        return ranked[0] if ranked else None


def complete_trials(study: Any) -> list[Any]:
    """The study's complete trials (Optuna's ``FrozenTrial``s, not copied)."""
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def ranked_trials(study: Any) -> list[Any]:
    """Complete trials, best first by the study's objectives (then lower validation loss, then earlier).

    One ordering for everything that says "best" (the best model, the kept
    models, leaderboards, reports, export), whatever order the storage
    returns ties in.
    """
    return Objectives.of_study(study).rank(complete_trials(study))


def best_trial(study: Any) -> Any:
    """The best complete trial by :func:`ranked_trials`, or ``None``."""
    ranked = ranked_trials(study)
    return ranked[0] if ranked else None
