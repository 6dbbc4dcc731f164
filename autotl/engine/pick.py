"""Choosing a trial by a condition: ``autotl export RUN_DIR --pick "latency_ms<=15"``.

A condition is ``NAME OP NUMBER`` with ``OP`` one of ``<=``, ``<``, ``>=``,
``>``, ``==``; several are joined by commas and must all hold.  ``NAME`` is an
objective (``accuracy``, ``latency_ms``, ...: its metric is read) or any metric
the trials recorded (``val_accuracy``, ``val_loss``, ...).  Among the complete
trials that meet the condition and the study's constraints, the pick is the
best by the study's one order (:mod:`autotl.scoring.objective`): the Pareto-optimal
ones among them, then the first objective.  So ``--pick "latency_ms<=15"`` on
an accuracy/latency study is the most accurate model of the front under 15 ms.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autotl.errors import UsageError
from autotl.scoring.objective import OBJECTIVES, Objectives, complete_trials, trial_metrics

if TYPE_CHECKING:
    from optuna import Study

__all__ = ["Condition", "parse_conditions", "pick_trial", "OPERATORS"]

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|<|>)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Condition:
    """``name op value``; ``metric`` is what trials record under that name."""

    name: str
    metric: str
    op: str
    value: float

    def holds(self, metrics: Mapping[str, float]) -> bool:
        found = metrics.get(self.metric)
        return found is not None and math.isfinite(found) and OPERATORS[self.op](found, self.value)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


def parse_conditions(text: str) -> list[Condition]:
    """``"latency_ms<=15,accuracy>=0.9"`` as conditions; a malformed one is a one-line UsageError."""
    out = []
    for part in str(text).split(","):
        m = _CONDITION.match(part)
        value = _number(m.group(3)) if m else None
        if m is None or value is None:
            raise UsageError(
                f"--pick: cannot read {part.strip()!r}; write NAME OP NUMBER with OP one of "
                f'{", ".join(OPERATORS)}, several joined by commas (e.g. "latency_ms<=15")'
            )
        name = m.group(1)
        metric = OBJECTIVES[name].metric if name in OBJECTIVES else name
        out.append(Condition(name, metric, m.group(2), value))
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def pick_trial(study: Study, text: str) -> Any:
    """The best complete trial of ``study`` that meets ``text``'s conditions and the study's
    constraints; a one-line UsageError names what no trial meets."""
    conditions = parse_conditions(text)
    objectives = Objectives.of_study(study)
    complete = complete_trials(study)
    metrics = {t.number: trial_metrics(t) for t in complete}
    recorded = sorted({k for m in metrics.values() for k in m})
    for c in conditions:
        if c.metric not in recorded:
            raise UsageError(
                f"--pick {c}: no complete trial recorded {c.name}; name an objective or a recorded "
                f"metric ({', '.join(recorded) or 'none yet'})"
                + (
                    "; deploy costs are measured only when an objective or a constraint names one"
                    if c.name in OBJECTIVES and OBJECTIVES[c.name].kind == "deploy"
                    else ""
                )
            )
    for c in conditions:
        if not any(c.holds(m) for m in metrics.values()):
            raise UsageError(
                f"--pick {text}: {_closest(c, complete, metrics)}; relax the condition"
            )
    meeting = [t for t in complete if all(c.holds(metrics[t.number]) for c in conditions)]
    if not meeting:
        raise UsageError(
            f"--pick {text}: each condition holds for some trial, but no complete trial meets them "
            "all together; relax one"
        )
    chosen = objectives.best(meeting)
    if chosen is None:
        broken = "; ".join(objectives.broken(metrics[meeting[0].number]))
        raise UsageError(
            f"--pick {text}: the {len(meeting)} trial(s) that meet it break the study's constraints "
            f"({broken}); pass --trial N to export one anyway"
        )
    return chosen


def _closest(c: Condition, complete: list[Any], metrics: dict[int, dict[str, float]]) -> str:
    """What comes nearest to meeting ``c``, in words."""
    values = [
        (m[c.metric], t.number)
        for t in complete
        if math.isfinite((m := metrics[t.number]).get(c.metric, math.nan))
    ]
    lowest, highest = min(values), max(values)
    near = lowest if c.op in ("<", "<=") else highest if c.op in (">", ">=") else None
    if near is None:
        near = min(values, key=lambda v: abs(v[0] - c.value))
    return (
        f"no complete trial has {c} (of {len(complete)} complete, the nearest is trial {near[1]} "
        f"with {c.name} {near[0]:g})"
    )
