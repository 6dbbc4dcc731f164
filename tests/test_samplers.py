"""Samplers chosen by name in the space: Optuna's own classes, seeded, one table."""

from __future__ import annotations

import importlib.util

import pytest

from autotl.engine.samplers import SAMPLERS, make_sampler
from autotl.engine.space import SearchSpace
from autotl.errors import UsageError


def draws(name: str, seed: int, n: int = 8) -> list[tuple]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed))

    def objective(trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        w = trial.suggest_categorical("w", [8, 16])
        return x + w / 100

    study.optimize(objective, n_trials=n)
    return [(round(t.params["x"], 12), t.params["w"]) for t in study.trials]


@pytest.mark.parametrize(
    "name", [n for n in SAMPLERS if n != "gp" or importlib.util.find_spec("torch")]
)
def test_every_sampler_runs_and_is_reproducible_from_its_seed(name: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, again, other = draws(name, 3), draws(name, 3), draws(name, 4)
    assert first == again
    assert first != other


def test_gp_without_torch_says_what_to_install() -> None:
    if importlib.util.find_spec("torch"):
        pytest.skip("torch is installed: the gp sampler runs (tested above)")
    with pytest.raises(
        UsageError, match="sampler gp needs the Python package 'torch': pip install torch"
    ):
        make_sampler("gp", 0)


def test_unknown_sampler_is_refused_by_the_space_and_by_name() -> None:
    with pytest.raises(UsageError, match="unknown sampler 'grid'"):
        make_sampler("grid", 0)
    with pytest.raises(
        ValueError,
        match="sampler: unknown sampler 'grid'; choose from tpe, random, cmaes, gp, nsga2",
    ):
        SearchSpace.model_validate(
            {"backbones": ["tiny"], "head": {"width": [8], "dropout": 0.1}, "sampler": "grid"}
        )


def test_the_space_sampler_drives_the_study(
    registry, tiny_dataset, tiny_space_file, tmp_path
) -> None:
    import optuna

    from autotl.backbones.weights import WeightsSource
    from autotl.engine.optuna_engine import SearchConfig, run_search
    from autotl.engine.space import load_space

    space, _ = load_space(tiny_space_file, {"sampler": "random"})
    study = run_search(
        SearchConfig(out=tmp_path / "run", space=space, trials=1, weights=WeightsSource("none")),
        registry,
        tiny_dataset,
    )
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    assert study.user_attrs["sampler"] == "random"
