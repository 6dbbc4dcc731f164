"""The samplers a search space may choose (``sampler: tpe``): Optuna's own classes, seeded.

One table, name to constructor.  A new sampler is one row here plus its test.
Optuna is imported when a sampler is made, not when this module is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autotl.errors import UsageError

__all__ = ["SAMPLERS", "DEFAULT_SAMPLER", "make_sampler"]

DEFAULT_SAMPLER = "tpe"
STARTUP_TRIALS = 5  # random trials before a model-based sampler takes over


def _tpe(seed: int, n_objectives: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)


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


def _gp(seed: int, n_objectives: int) -> Any:
    import optuna

    _require("gp", "torch", "pip install torch (a CPU build is enough)")
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP_TRIALS)


def _nsga2(seed: int, n_objectives: int) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


#: Sampler name (as a space's ``sampler`` field says it) to ``constructor(seed, n_objectives)``.
SAMPLERS: dict[str, Callable[[int, int], Any]] = {
    "tpe": _tpe,
    "random": _random,
    "cmaes": _cmaes,
    "gp": _gp,
    "nsga2": _nsga2,
}


def _require(sampler: str, module: str, how: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"sampler {sampler} needs the Python package {module!r}: {how}")


def make_sampler(name: str, seed: int, n_objectives: int = 1) -> Any:
    """A new Optuna sampler called ``name``, seeded; a one-line UsageError for an unknown or unusable one."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed, n_objectives)
