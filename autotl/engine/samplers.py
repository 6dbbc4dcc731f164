"""The samplers a search space may choose (``sampler: tpe``): Optuna's own classes, seeded.

One table, name to constructor.  A new sampler is one row here plus its test.
Optuna is imported when a sampler is made, not when this module is.

A study with constraints (``constraints: {latency_ms: 15}``) passes Optuna a
``constraints_func``; the samplers that model constraints (TPE, NSGA-II, GP)
take it and steer away from infeasible regions.  Random and CMA-ES sample
without it; for every sampler, a trial that breaks a constraint is never the
best (:mod:`autotl.scoring.objective`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

from autotl.errors import UsageError

__all__ = ["SAMPLERS", "DEFAULT_SAMPLER", "CONSTRAINED", "make_sampler"]

DEFAULT_SAMPLER = "tpe"
STARTUP_TRIALS = 5  # random trials before a model-based sampler takes over
#: Optuna's ``constraints_func``: a finished trial's constraint values (``<= 0``: met).
ConstraintsFunc = Callable[[Any], Sequence[float]]


def _tpe(seed: int, n_objectives: int, constraints: Optional[ConstraintsFunc] = None) -> Any:
    import optuna

    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=STARTUP_TRIALS, constraints_func=constraints
    )


def _random(seed: int, n_objectives: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _cmaes(seed: int, n_objectives: int) -> Any:
    import optuna

    if n_objectives > 1:
        raise UsageError("sampler cmaes optimises one objective; use nsga2 or tpe for several")
    _require("cmaes", "cmaes", "pip install cmaes")
    # categorical parameters (backbone, head width) are sampled independently, as Optuna documents
    return optuna.samplers.CmaEsSampler(
        seed=seed, n_startup_trials=STARTUP_TRIALS, warn_independent_sampling=False
    )


def _gp(seed: int, n_objectives: int, constraints: Optional[ConstraintsFunc] = None) -> Any:
    import optuna

    _require("gp", "torch", "pip install torch (a CPU build is enough)")
    return optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=STARTUP_TRIALS, constraints_func=constraints
    )


def _nsga2(seed: int, n_objectives: int, constraints: Optional[ConstraintsFunc] = None) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)


#: Sampler name (as a space's ``sampler`` field says it) to ``constructor(seed, n_objectives)``;
#: the ones in :data:`CONSTRAINED` also take ``constraints`` (Optuna's ``constraints_func``).
SAMPLERS: dict[str, Callable[..., Any]] = {
    "tpe": _tpe,
    "random": _random,
    "cmaes": _cmaes,
    "gp": _gp,
    "nsga2": _nsga2,
}
CONSTRAINED = frozenset({"tpe", "gp", "nsga2"})


def _require(sampler: str, module: str, how: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"sampler {sampler} needs the Python package {module!r}: {how}")


def make_sampler(
    name: str, seed: int, n_objectives: int = 1, constraints: Optional[ConstraintsFunc] = None
) -> Any:
    """A new Optuna sampler called ``name``, seeded; a one-line UsageError for an unknown or unusable one.

    ``constraints`` goes to the samplers that model constraints (:data:`CONSTRAINED`); the others ignore it.
    """
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if constraints is not None and name in CONSTRAINED:
        return SAMPLERS[name](seed, n_objectives, constraints)
    return SAMPLERS[name](seed, n_objectives)
