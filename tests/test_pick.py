"""--pick: the best trial that meets a condition, chosen from the front by the study's one order."""

from __future__ import annotations

import pytest

from autotl.engine.pick import parse_conditions, pick_trial
from autotl.errors import UsageError


def study_of(rows, objectives=("accuracy", "latency_ms"), constraints=None):
    """An in-memory study of complete trials ``(val_accuracy, latency_ms)``, plus one failed trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        directions=["maximize", "minimize"][: len(objectives)] if len(objectives) == 2 else None
    )
    study.set_user_attr("objectives", list(objectives))
    study.set_user_attr("constraints", constraints or {})
    for acc, lat in rows:
        trial = study.ask()
        trial.set_user_attr("metrics", {"val_accuracy": acc, "latency_ms": lat, "val_loss": 0.2})
        study.tell(trial, [acc, lat][: len(objectives)])
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    return study


ROWS = [(0.95, 20.0), (0.90, 10.0), (0.80, 5.0), (0.85, 12.0)]


def test_conditions_parse_names_operators_and_numbers() -> None:
    cs = parse_conditions("latency_ms<=15, accuracy >= 0.9,val_loss<1e-1")
    assert [(c.name, c.metric, c.op, c.value) for c in cs] == [
        ("latency_ms", "latency_ms", "<=", 15.0),
        ("accuracy", "val_accuracy", ">=", 0.9),
        ("val_loss", "val_loss", "<", 0.1),
    ]
    assert cs[0].holds({"latency_ms": 15.0}) and not cs[0].holds({"latency_ms": 15.1})
    assert not cs[0].holds({})
    for bad in ("latency_ms", "latency_ms<<3", "latency_ms<=fast", "<=3", "latency_ms<=nan"):
        with pytest.raises(UsageError, match="cannot read"):
            parse_conditions(bad)


def test_pick_is_the_most_accurate_of_the_front_under_the_condition() -> None:
    study = study_of(ROWS)
    assert pick_trial(study, "latency_ms<=15").number == 1
    assert pick_trial(study, "latency_ms<=6").number == 2
    assert pick_trial(study, "latency_ms<15,accuracy>=0.85").number == 1
    assert pick_trial(study, "latency_ms==12").number == 3  # off the front, but the only one
    assert pick_trial(study, "val_loss<1").number == 0  # any recorded metric


def test_pick_keeps_the_studys_constraints() -> None:
    study = study_of(ROWS, constraints={"latency_ms": 11.0})
    assert pick_trial(study, "accuracy>=0.8").number == 1
    with pytest.raises(UsageError, match="break the study's constraints \\(latency_ms <= 11\\)"):
        pick_trial(study, "accuracy>=0.95")


def test_a_condition_no_trial_meets_is_one_line_naming_the_nearest() -> None:
    study = study_of(ROWS)
    with pytest.raises(UsageError) as err:
        pick_trial(study, "latency_ms<=2")
    message = str(err.value)
    assert "\n" not in message
    assert (
        "no complete trial has latency_ms<=2" in message and "trial 2 with latency_ms 5" in message
    )
    with pytest.raises(UsageError, match="no complete trial meets them all together"):
        pick_trial(study, "latency_ms<=6,accuracy>=0.9")
    with pytest.raises(UsageError, match=r"no complete trial recorded size_mb.*deploy costs"):
        pick_trial(study, "size_mb<=1")
    with pytest.raises(UsageError, match="no complete trial recorded speed"):
        pick_trial(study, "speed<=1")
