"""The objective, defined once: directions, values, and the one order that says "best"."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from autotl.errors import UsageError
from autotl.objective import (
    OBJECTIVES,
    Objectives,
    best_trial,
    get_objective,
    ranked_trials,
    trial_metrics,
)


def frozen(number: int, metrics: dict, state: str = "COMPLETE", values=None) -> SimpleNamespace:
    return SimpleNamespace(
        number=number,
        user_attrs={"metrics": metrics},
        state=SimpleNamespace(name=state),
        values=values,
    )


def test_accuracy_is_the_default_and_maximised() -> None:
    objectives = Objectives.of()
    assert objectives.names == ["accuracy"] and objectives.directions == ["maximize"]
    assert objectives.values({"val_accuracy": 0.9, "val_loss": 0.3}) == [0.9]
    with pytest.raises(KeyError, match="val_accuracy"):
        objectives.values({"val_loss": 0.3})


def test_unknown_or_repeated_objective_is_one_line() -> None:
    with pytest.raises(UsageError, match="unknown objective 'latency'; choose from accuracy"):
        get_objective("latency")
    with pytest.raises(UsageError, match="distinct"):
        Objectives.of(["accuracy", "accuracy"])


def test_rank_breaks_ties_by_loss_then_the_earlier_trial() -> None:
    trials = [
        frozen(0, {"val_accuracy": 0.8, "val_loss": 0.4}),
        frozen(1, {"val_accuracy": 0.9, "val_loss": 0.5}),
        frozen(2, {"val_accuracy": 0.9, "val_loss": 0.3}),
        frozen(3, {"val_accuracy": 0.9, "val_loss": 0.3}),
        frozen(4, {}),  # running: no value, never ranked
    ]
    assert [t.number for t in Objectives.of().rank(trials)] == [2, 3, 1, 0]


def test_a_minimised_objective_sorts_the_other_way() -> None:
    from autotl.objective import Objective

    fake = Objective("loss", "val_loss", "minimize", "validation loss", "val loss")
    objectives = Objectives((fake,))
    trials = [frozen(0, {"val_loss": 0.5}), frozen(1, {"val_loss": 0.2})]
    assert [t.number for t in objectives.rank(trials)] == [1, 0]
    assert fake.better(0.1, 0.2) and not fake.better(0.3, 0.2) and not fake.better(None, 0.2)


def test_metrics_of_older_trials_come_from_their_value_and_val_loss() -> None:
    old = SimpleNamespace(number=0, values=[0.75], user_attrs={"val_loss": 0.4})
    assert trial_metrics(old) == {"val_accuracy": 0.75, "val_loss": 0.4}
    assert trial_metrics({"number": 1, "user_attrs": {"metrics": {"val_accuracy": 0.5}}}) == {
        "val_accuracy": 0.5
    }


def test_study_helpers_read_the_objectives_from_the_study(tmp_path) -> None:
    import optuna

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("objectives", ["accuracy"])
    for acc, loss in ((0.5, 0.2), (0.9, 0.9), (0.9, 0.1)):
        trial = study.ask()
        trial.set_user_attr("metrics", {"val_accuracy": acc, "val_loss": loss})
        study.tell(trial, acc)
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert [t.number for t in ranked_trials(study)] == [2, 1, 0]
    assert best_trial(study).number == 2
    assert set(OBJECTIVES) >= {"accuracy"}
