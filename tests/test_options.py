"""One options model: the CLI's flags, the API's keywords, the workers' configuration and the run's
record are all derived from ``SearchOptions`` and cannot drift from it."""

from __future__ import annotations

import inspect
import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import get_args

import pytest
from helpers import TINY_PLUGIN, assert_one_line_error, run_cli

import autotl
from autotl.cli import build_parser, search_options
from autotl.engine.options import SearchOptions, accepted, choices, flags

FIELDS = list(SearchOptions.model_fields)


def _other_value(name: str) -> object:
    """A valid value for option ``name`` that is not its default, read from its type."""
    info = SearchOptions.model_fields[name]
    special = {
        "space": "fast",
        "cache_budget": 20_000_000_000,
        "weights_dir": "/tmp",
        "test_fraction": 0.2,
    }
    if name in special:
        return special[name]
    if choices(name):
        return next(c for c in reversed(choices(name)) if c != info.default)
    kinds = {a for a in get_args(info.annotation) if a is not type(None)} or {info.annotation}
    if info.annotation is bool:
        return not info.default
    if kinds == {int}:
        return (info.default or 0) + 2
    if kinds == {float}:
        return 2.5
    if any(getattr(k, "__origin__", k) is tuple for k in kinds) or info.default == ():
        return ("a", "b")
    return "x"


def _argv(name: str, value: object) -> list[str]:
    """``value`` for option ``name`` as a user types it, by the flag the model declares."""
    flag = flags()[name]
    if flag.positional:
        return [str(value)]
    if isinstance(value, bool):
        return [flag.flag(name)]
    if isinstance(value, tuple):
        if flag.repeat:
            return [part for v in value for part in (flag.flag(name), v)]
        return [flag.flag(name), ",".join(value)]
    return [flag.flag(name), str(value)]


def test_the_search_flags_left_out_are_the_models_defaults() -> None:
    args = build_parser().parse_args(["search"])
    assert search_options(args) == {}  # nothing but what was typed: the model fills in the rest
    assert SearchOptions.parse(**search_options(args)) == SearchOptions()


@pytest.mark.parametrize("name", FIELDS)
def test_every_option_has_a_flag_that_gives_the_same_value_as_the_keyword(name: str) -> None:
    value = _other_value(name)
    args = build_parser().parse_args(["search", *_argv(name, value)])
    from_cli = SearchOptions.parse(**search_options(args))
    from_api = SearchOptions.parse(**{name: value})
    assert from_cli == from_api != SearchOptions()
    assert getattr(from_cli, name) != SearchOptions.model_fields[name].default


def test_every_option_is_a_keyword_of_search_with_the_models_default_and_type() -> None:
    params = inspect.signature(autotl.search).parameters
    for name, info in SearchOptions.model_fields.items():
        assert params[name].default == info.default, name
        assert name == "data" or params[name].annotation == accepted(name), name
    callers = {"on_event", "should_stop", "command"}
    assert set(params) == set(FIELDS) | callers


def test_the_docs_table_of_search_options_names_every_flag() -> None:
    from helpers import ROOT

    page = (ROOT / "docs" / "getting-started.md").read_text()
    table = page[page.index("`autotl search` options:") :].split("\n\n")[1]
    missing = [
        f.flag(n) for n, f in flags().items() if not f.positional and f"`{f.flag(n)}" not in table
    ]
    assert not missing, f"docs/getting-started.md's `autotl search` options table lacks {missing}"


def test_an_unknown_keyword_is_a_type_error_and_a_bad_value_one_line() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'heartbeats'"):
        autotl.search(sample="digits", heartbeats=3)
    with pytest.raises(autotl.UsageError) as caught:
        autotl.search(sample="digits", heartbeat=0, engine="grid", cache_budget="0GB")
    assert str(caught.value) == (
        "unknown engine 'grid'; choose from optuna, keras-tuner; heartbeat must be at least 1 "
        "second, got 0; cache_budget must be positive, got '0GB'"
    )


def test_keras_tuner_refuses_the_optuna_engines_options() -> None:
    with pytest.raises(
        autotl.UsageError, match="timeout, workers and gpus are the Optuna engine's"
    ):
        SearchOptions.parse(engine="keras-tuner", gpus="0,1")


def test_the_engines_settings_share_the_options_defaults() -> None:
    """``SearchConfig`` takes the options it shares with the model by name: the same defaults."""
    from autotl.engine.optuna_engine import SearchConfig

    shared = [f for f in fields(SearchConfig) if f.name in SearchOptions.model_fields]
    assert len(shared) >= 10
    for f in shared:
        if f.default is not MISSING:
            assert f.default == SearchOptions.model_fields[f.name].default, f.name


def test_a_workers_configuration_is_the_options_with_the_space_resolved(
    tiny_dataset, registry, tmp_path: Path
) -> None:
    from autotl.api import _Plan, worker_config
    from autotl.backbones.weights import WeightsSource
    from autotl.engine.space import load_space

    space = load_space("fast")[0].model_copy(update={"backbones": ["tiny"]})
    options = SearchOptions.parse(
        data=str(tmp_path),
        space="fast",
        screen=2,
        objectives="accuracy",
        test_fraction=0.2,
        workers=3,
        heartbeat=7,
    )
    plan = _Plan(
        options=options,
        out=tmp_path / "run",
        space=space,
        space_file=None,
        trials=5,
        weights=WeightsSource("none"),
        registry=registry,
        dataset=tiny_dataset,
        command="autotl search",
    )
    config = json.loads(json.dumps(worker_config(plan)))
    assert set(config["options"]) == set(FIELDS)
    again = SearchOptions.parse(**config["options"])
    assert again.space == space and again.trials == 5 and again.heartbeat == 7
    # applied to the space here already, and one worker each
    assert (again.screen, again.objectives, again.test_fraction, again.workers) == (None,) * 3 + (
        1,
    )
    assert config["session"] == plan.session and config["command"] == "autotl search"


def test_a_bad_flag_value_is_one_line_with_exit_2(tmp_path: Path) -> None:
    common = ["search", str(tmp_path), "--plugin", TINY_PLUGIN, "--weights", "none"]
    assert_one_line_error(
        run_cli(*common, "--heartbeat", "0", "--cache-budget", "lots"),
        "heartbeat must be at least 1 second, got 0; cache_budget must be a size like 20GB",
    )
    assert_one_line_error(
        run_cli(*common, "--cache-dtype", "float64"), "argument --cache-dtype: invalid choice"
    )
