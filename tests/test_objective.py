"""The objective, defined once: directions, values, and the one order that says "best"."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from autotl.errors import UsageError
from autotl.scoring.objective import (
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
    from autotl.scoring.objective import Objective

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


# -- several objectives, constraints and the Pareto front

ACC_LAT = ["accuracy", "latency_ms"]


def points(*rows: tuple[int, float, float]) -> list[SimpleNamespace]:
    """Trials ``(number, val_accuracy, latency_ms)``."""
    return [
        frozen(n, {"val_accuracy": a, "latency_ms": lat, "val_loss": 0.1}) for n, a, lat in rows
    ]


def test_every_objective_names_a_metric_and_a_direction() -> None:
    from autotl.scoring.objective import DEPLOY, VALIDATION

    assert set(OBJECTIVES) == {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "log_loss",
        "latency_ms",
        "size_mb",
        "params",
    }
    for o in OBJECTIVES.values():
        assert o.direction in ("maximize", "minimize") and o.kind in (VALIDATION, DEPLOY)
    deploy = {o.name for o in OBJECTIVES.values() if o.kind == DEPLOY}
    assert deploy == {"latency_ms", "size_mb", "params"}
    assert Objectives.of(ACC_LAT).directions == ["maximize", "minimize"]
    assert Objectives.of(ACC_LAT).needs_deploy_costs
    assert Objectives.of(["accuracy"], {"size_mb": 5}).needs_deploy_costs
    assert not Objectives.of(["accuracy", "macro_f1"]).needs_deploy_costs


def test_several_objectives_rank_the_front_first_then_by_the_first_objective() -> None:
    trials = points((0, 0.90, 10.0), (1, 0.80, 5.0), (2, 0.85, 12.0), (3, 0.95, 20.0))
    objectives = Objectives.of(ACC_LAT)
    # 2 is dominated by 0 (less accurate and slower); 3, 0, 1 are the front, by accuracy
    assert [t.number for t in objectives.rank(trials)] == [3, 0, 1, 2]
    assert [t.number for t in objectives.front(trials)] == [3, 0, 1]
    assert objectives.best(trials).number == 3


def test_a_trial_that_breaks_a_constraint_is_never_best() -> None:
    trials = points((0, 0.90, 10.0), (1, 0.80, 5.0), (2, 0.85, 12.0), (3, 0.95, 20.0))
    objectives = Objectives.of(ACC_LAT, {"latency_ms": 15})
    assert [t.number for t in objectives.rank(trials)] == [0, 1, 2, 3]
    assert objectives.best(trials).number == 0
    assert [t.number for t in objectives.front(trials)] == [0, 1]
    assert objectives.broken({"val_accuracy": 0.95, "latency_ms": 20.0}) == ["latency_ms <= 15"]
    assert objectives.constraint_values({"latency_ms": 20.0}) == [5.0]
    # single objective, a constraint on a metric it does not search: the fastest enough is best
    only_acc = Objectives.of(["accuracy"], {"latency_ms": 15})
    assert only_acc.best(trials).number == 0
    assert Objectives.of(["accuracy"], {"latency_ms": 1}).best(trials) is None


def test_a_maximised_constraint_is_a_floor_and_an_unmeasured_one_is_not_met() -> None:
    objectives = Objectives.of(["latency_ms"], {"balanced_accuracy": 0.8})
    assert objectives.broken({"latency_ms": 3.0, "val_balanced_accuracy": 0.7}) == [
        "balanced_accuracy >= 0.8"
    ]
    assert objectives.violation({"latency_ms": 3.0, "val_balanced_accuracy": 0.9}) == 0
    assert objectives.violation({"latency_ms": 3.0}) == float("inf")


def test_constraints_on_unknown_names_or_bounds_are_one_line() -> None:
    with pytest.raises(UsageError, match="constraint on 'latency', which is neither searched"):
        Objectives.of(["accuracy"], {"latency": 15})
    with pytest.raises(UsageError, match="must be a number"):
        Objectives.of(["accuracy"], {"latency_ms": "fast"})


def test_a_study_keeps_its_constraints() -> None:
    import optuna

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ACC_LAT)
    study.set_user_attr("constraints", {"latency_ms": 15.0})
    for acc, lat in ((0.95, 20.0), (0.9, 10.0), (0.8, 5.0)):
        trial = study.ask()
        trial.set_user_attr("metrics", {"val_accuracy": acc, "latency_ms": lat})
        study.tell(trial, [acc, lat])
    assert [t.number for t in ranked_trials(study)] == [1, 2, 0]
    assert best_trial(study).number == 1


@pytest.mark.parametrize("dims", [2, 3])
def test_pareto_levels_peel_the_fronts(dims: int) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from autotl.scoring.objective import pareto_levels

    def dominates(a, b) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    @settings(max_examples=80, deadline=None)
    @given(st.lists(st.lists(st.integers(0, 5), min_size=dims, max_size=dims), max_size=25))
    def check(pts: list[list[int]]) -> None:
        levels = pareto_levels(pts)
        for p, lv in zip(pts, levels):
            # nothing on its own level or below dominates it; something one level up does
            assert not any(dominates(q, p) for q, lq in zip(pts, levels) if lq >= lv)
            if lv > 0:
                assert any(dominates(q, p) for q, lq in zip(pts, levels) if lq == lv - 1)

    check()
