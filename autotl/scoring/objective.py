"""What a search optimises: each objective defined once, its constraints, and the one order that says "best".

An :class:`Objective` is a name a user writes (``accuracy``, ``latency_ms``),
the metric a trial records (``val_accuracy``, ``latency_ms``), its direction,
how it is shown, and who measures it: the trainer, on the validation split
(``kind="validation"``), or the deploy-cost measurement on the exported
TFLite model (``kind="deploy"``, once per backbone, input size and head
shape).  The study's :class:`Objectives` are a list of them in order, plus
:class:`Constraint` bounds (``constraints: {latency_ms: 15}``): they give
Optuna its ``directions`` and constraint values, turn a trial's metrics into
the values its objective function returns, read them back from any trial,
and rank trials for the search (which trials keep their layers, which is the
best model), the keras-tuner engine, the leaderboards, the report and export.

"Best first" is one order, :meth:`Objectives.key`: trials that meet every
constraint first (the others by how far they miss), then by Pareto level
(the non-dominated trials are level 0; with one objective every trial is),
then each objective in the order the space lists them, then the lower
validation loss, then the earlier trial.  So with several objectives the
single best trial is the Pareto-optimal trial that meets the constraints and
is best on the first objective; a trial that breaks a constraint is never
"best" (:meth:`Objectives.best` is ``None`` when none meets them).

A new objective is one entry in :data:`OBJECTIVES` (plus, if nothing records
its metric yet, the code that measures it).  This module imports nothing
heavy: Optuna's trials are read by duck typing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Optional

from autotl.errors import UsageError

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

__all__ = [
    "Objective",
    "Objectives",
    "Constraint",
    "OBJECTIVES",
    "DEFAULT_OBJECTIVES",
    "TIE_BREAK",
    "VALIDATION",
    "DEPLOY",
    "get_objective",
    "trial_metrics",
    "complete_trials",
    "ranked_trials",
    "best_trial",
]

#: An objective's direction, as Optuna spells it.
Direction = Literal["maximize", "minimize"]
MAXIMIZE: Final = "maximize"
MINIMIZE: Final = "minimize"
#: Who measures an objective's metric: the trainer on the validation split, or the deploy-cost measurement.
VALIDATION, DEPLOY = "validation", "deploy"
#: The metric that breaks ties between equal objective values (lower is better), then the earlier trial wins.
TIE_BREAK = "val_loss"


@dataclass(frozen=True)
class Objective:
    """One objective: ``name`` as written in a space, the ``metric`` trials record, and its direction."""

    name: str
    metric: str
    direction: Direction
    label: str  # "validation accuracy": in sentences
    short: str  # "val acc": in table headers
    fmt: str = ".4f"
    kind: str = (
        VALIDATION  # who measures it: VALIDATION (the trainer) or DEPLOY (the exported model)
    )

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


#: Every objective autotl knows, by the name a space or ``--objectives`` uses.  The trainer records
#: the validation metrics of every trial; the deploy costs are measured when an objective or a
#: constraint names one (``autotl.export._deploy_costs``).  ``log_loss`` is the validation loss: the mean
#: cross-entropy of the epoch early stopping restored.
OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("accuracy", "val_accuracy", MAXIMIZE, "validation accuracy", "val acc"),
        Objective(
            "balanced_accuracy",
            "val_balanced_accuracy",
            MAXIMIZE,
            "validation balanced accuracy",
            "val bal acc",
        ),
        Objective("macro_f1", "val_macro_f1", MAXIMIZE, "validation macro F1", "val macro F1"),
        Objective("log_loss", "val_loss", MINIMIZE, "validation log loss", "val log loss"),
        Objective(
            "latency_ms",
            "latency_ms",
            MINIMIZE,
            "TFLite latency (ms)",
            "latency ms",
            fmt=".2f",
            kind=DEPLOY,
        ),
        Objective(
            "size_mb", "size_mb", MINIMIZE, "TFLite file (MB)", "size MB", fmt=".2f", kind=DEPLOY
        ),
        Objective("params", "params", MINIMIZE, "parameters", "params", fmt=",.0f", kind=DEPLOY),
    )
}
DEFAULT_OBJECTIVES: tuple[str, ...] = ("accuracy",)
#: The metrics the deploy-cost measurement records (``autotl.export._deploy_costs``).
DEPLOY_METRICS: tuple[str, ...] = tuple(o.metric for o in OBJECTIVES.values() if o.kind == DEPLOY)


def get_objective(name: str) -> Objective:
    """The objective called ``name``; a one-line UsageError names the known ones otherwise."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise UsageError(
            f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}"
        ) from None


def _value(trial: FrozenTrial) -> Optional[list[float]]:
    """A trial's objective values (``values``), or None (running, failed, or an engine's record)."""
    values = getattr(trial, "values", None)
    if values is None:
        try:
            value = getattr(trial, "value", None)  # a FrozenTrial of several objectives raises here
        except Exception:
            value = None
        values = None if value is None else [value]
    return list(values) if values else None


def trial_metrics(trial: FrozenTrial | Mapping[str, Any]) -> dict[str, float]:
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
class Constraint:
    """A bound an objective's metric must meet: at most ``bound`` when it is minimised
    (``latency_ms: 15``), at least ``bound`` when it is maximised (``balanced_accuracy: 0.8``)."""

    objective: Objective
    bound: float

    def slack(self, metrics: Mapping[str, float]) -> Optional[float]:
        """How far the value is on the wrong side of the bound (``<= 0``: met), or None when unmeasured."""
        value = metrics.get(self.objective.metric)
        if value is None or not math.isfinite(value):
            return None
        return self.objective.signed(value) - self.objective.signed(self.bound)

    def describe(self) -> str:
        op = "<=" if self.objective.direction == MINIMIZE else ">="
        return f"{self.objective.name} {op} {self.bound:g}"


def _constraints(given: Mapping[str, Any] | None, names: Sequence[str]) -> tuple[Constraint, ...]:
    """Constraints from ``{name: bound}``; a name no objective has, or a bound that is no number, is a UsageError."""
    out = []
    for name, bound in (given or {}).items():
        if name not in OBJECTIVES:
            raise UsageError(
                f"constraint on {name!r}, which is neither searched ({', '.join(names)}) nor "
                f"measured; constrain one of {', '.join(OBJECTIVES)}"
            )
        if (
            isinstance(bound, bool)
            or not isinstance(bound, (int, float))
            or not math.isfinite(bound)
        ):
            raise UsageError(f"constraint {name}: the bound must be a number, got {bound!r}")
        out.append(Constraint(OBJECTIVES[name], float(bound)))
    return tuple(out)


def pareto_levels(vectors: Sequence[Sequence[float]]) -> list[int]:
    """Each point's Pareto level (0: no other point dominates it), every coordinate smaller-is-better.

    A point dominates another when it is no worse in every coordinate and
    better in one; equal points share a level.  ``inf`` marks a missing value.
    """
    import numpy as np

    if len(vectors) < 2:
        return [0] * len(vectors)
    v = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    level = np.zeros(len(v), dtype=np.int64)
    dominates = np.asarray(
        (v[:, None, :] <= v[None, :, :]).all(-1) & (v[:, None, :] < v[None, :, :]).any(-1)
    )
    remaining, current = np.ones(len(v), dtype=bool), 0
    while remaining.any():
        idx = np.flatnonzero(remaining)
        front = idx[~dominates[np.ix_(idx, idx)].any(axis=0)]
        level[front] = current
        remaining[front] = False
        current += 1
    return level.tolist()


@dataclass(frozen=True)
class Objectives:
    """The study's objectives, in order (the first is the primary one, shown first everywhere), and its constraints."""

    items: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()

    @classmethod
    def of(
        cls, names: Iterable[str] | None = None, constraints: Mapping[str, Any] | None = None
    ) -> Objectives:
        """From names (default: accuracy) and ``{name: bound}``; unknown or repeated names are a UsageError."""
        names = list(names or DEFAULT_OBJECTIVES)
        if len(set(names)) != len(names):
            raise UsageError(f"objectives must be distinct, got {names}")
        return cls(tuple(get_objective(n) for n in names), _constraints(constraints, names))

    @classmethod
    def of_study(cls, study: Study) -> Objectives:
        """The objectives and constraints a study was created with (its ``objectives`` and ``constraints``
        attributes; accuracy alone for older studies)."""
        attrs = getattr(study, "user_attrs", None) or {}
        return cls.of(attrs.get("objectives"), attrs.get("constraints"))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.items]

    @property
    def directions(self) -> list[Direction]:
        """Optuna's ``directions``."""
        return [o.direction for o in self.items]

    @property
    def primary(self) -> Objective:
        return self.items[0]

    @property
    def needs_deploy_costs(self) -> bool:
        """Whether an objective or a constraint is a deploy cost (so every trial must have them measured)."""
        named = [*self.items, *(c.objective for c in self.constraints)]
        return any(o.kind == DEPLOY for o in named)

    def constraint_bounds(self) -> dict[str, float]:
        """``{name: bound}``, as a space and the study's ``constraints`` attribute write them."""
        return {c.objective.name: c.bound for c in self.constraints}

    def values(self, metrics: Mapping[str, float]) -> list[float]:
        """What the objective function returns for a trial that recorded ``metrics``."""
        missing = [o.metric for o in self.items if o.metric not in metrics]
        if missing:
            raise KeyError(f"the trial recorded no {', '.join(missing)}")
        return [float(metrics[o.metric]) for o in self.items]

    def value(self, trial: FrozenTrial, objective: Optional[Objective] = None) -> Optional[float]:
        """A trial's value of ``objective`` (default: the primary one), or None if it has none."""
        found = trial_metrics(trial).get((objective or self.primary).metric)
        return None if found is None or not math.isfinite(found) else found

    def constraint_values(self, metrics: Mapping[str, float]) -> list[float]:
        """Optuna's constraint values (``<= 0``: met), one per constraint; ``inf`` when unmeasured."""
        return [math.inf if (s := c.slack(metrics)) is None else s for c in self.constraints]

    def violation(self, metrics: Mapping[str, float]) -> float:
        """By how much ``metrics`` miss the constraints in total (0: all met; ``inf``: one unmeasured)."""
        return sum(max(0.0, v) for v in self.constraint_values(metrics))

    def broken(self, metrics: Mapping[str, float]) -> list[str]:
        """The constraints ``metrics`` do not meet, as ``latency_ms <= 15`` (unmeasured counts as not met)."""
        return [
            c.describe() for c, v in zip(self.constraints, self.constraint_values(metrics)) if v > 0
        ]

    def _point(self, metrics: Mapping[str, float]) -> list[float]:
        out = []
        for o in self.items:
            v = metrics.get(o.metric)
            out.append(math.inf if v is None or not math.isfinite(v) else o.signed(v))
        return out

    def key(self, metrics: Mapping[str, float], number: int, level: int = 0) -> tuple[float, ...]:
        """The sort key of "best first" (see the module's docstring); a missing value sorts last.

        ``level`` is the trial's Pareto level among the trials being ranked
        (:meth:`keys` computes it; with one objective it changes nothing).
        """
        loss = metrics.get(TIE_BREAK)
        tail = math.inf if loss is None or not math.isfinite(loss) else loss
        return (self.violation(metrics), level, *self._point(metrics), tail, number)

    def keys(self, pairs: Sequence[tuple[Mapping[str, float], int]]) -> list[tuple[float, ...]]:
        """:meth:`key` of every ``(metrics, number)`` with its Pareto level among those that meet the
        constraints (and, separately, among those that do not)."""
        levels = [0] * len(pairs)
        if len(self.items) > 1:
            met = [self.violation(m) == 0 for m, _ in pairs]
            for group in (True, False):
                idx = [i for i, ok in enumerate(met) if ok is group]
                for i, lv in zip(idx, pareto_levels([self._point(pairs[i][0]) for i in idx])):
                    levels[i] = lv
        return [self.key(m, n, lv) for (m, n), lv in zip(pairs, levels)]

    def trial_key(self, trial: FrozenTrial) -> tuple[float, ...]:
        """The key of one trial ranked alone (level 0): comparable with :meth:`key`, not a Pareto level."""
        number = trial["number"] if isinstance(trial, Mapping) else trial.number
        return self.key(trial_metrics(trial), number)

    def rank(self, trials: Sequence[Any]) -> list[Any]:
        """The scored trials among ``trials``, best first (states are the caller's to filter)."""
        scored = [t for t in trials if self.value(t) is not None]
        keys = self.keys(
            [
                (trial_metrics(t), t["number"] if isinstance(t, Mapping) else t.number)
                for t in scored
            ]
        )
        return [t for _, t in sorted(zip(keys, scored), key=lambda kt: kt[0])]

    def best(self, trials: Sequence[Any]) -> Any:
        """The best of ``trials``: first in :meth:`rank`, if it meets every constraint; else None."""
        ranked = self.rank(trials)
        return ranked[0] if ranked and self.violation(trial_metrics(ranked[0])) == 0 else None

    def front(self, trials: Sequence[Any]) -> list[Any]:
        """The Pareto-optimal trials among ``trials`` that meet the constraints, best first."""
        ranked = self.rank(trials)
        pairs = [(trial_metrics(t), 0) for t in ranked]
        return [t for t, k in zip(ranked, self.keys(pairs)) if k[0] == 0 and k[1] == 0]


def complete_trials(study: Study) -> list[Any]:
    """The study's complete trials (Optuna's ``FrozenTrial``s, not copied)."""
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def ranked_trials(study: Study) -> list[Any]:
    """Complete trials, best first by the study's objectives (then lower validation loss, then earlier).

    One ordering for everything that says "best" (the best model, the kept
    models, leaderboards, reports, export), whatever order the storage
    returns ties in.
    """
    return Objectives.of_study(study).rank(complete_trials(study))


def best_trial(study: Study) -> Any:
    """The best complete trial by :func:`ranked_trials` that meets the study's constraints, or ``None``."""
    return Objectives.of_study(study).best(complete_trials(study))
