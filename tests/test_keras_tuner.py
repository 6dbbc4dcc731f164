"""keras-tuner drives autotl's two-phase trainer through TransferHyperModel."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

kt = pytest.importorskip("keras_tuner")

from autotl.backbones.weights import WeightsSource  # noqa: E402 -- after importorskip
from autotl.engine.keras_tuner import TransferHyperModel, run_keras_tuner_search  # noqa: E402 -- after importorskip
from autotl.engine.space import FloatRange, SearchSpace, load_space  # noqa: E402 -- after importorskip
from autotl.errors import UsageError  # noqa: E402 -- after importorskip

pytestmark = pytest.mark.slow  # `make test-fast` skips this module

NONE = WeightsSource("none")


@pytest.fixture
def space(tiny_space_file: Path) -> SearchSpace:
    return load_space(tiny_space_file)[0]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for the module, as one run folder would have."""
    return tmp_path_factory.mktemp("features")


def evaluate(model, dataset) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the full model on the raw val images (any size: the model resizes)."""
    probs = np.concatenate(
        [
            np.asarray(model(dataset.val.load(i)[None].astype("float32"), training=False))
            for i in range(len(dataset.val))
        ]
    )
    labels = dataset.val.labels
    return float(np.mean(np.argmax(probs, axis=1) == labels)), float(
        np.mean(-np.log(probs[np.arange(len(labels)), labels]))
    )


def assert_phase2_only_after_the_gate(record: dict) -> None:
    a, p = record["user_attrs"], record["trial_params"]
    h1, h2 = a["history"]["phase1"], a["history"]["phase2"]
    assert bool(h2) == (a["gate"] == "passed"), a["gate"]
    if h2:
        stable = a["head_stable_epoch"]
        assert stable is not None
        assert (
            len(h1["val_loss"]) - 1 - stable >= p["phase1_patience"]
        )  # the head's val loss plateaued for `patience` epochs
        assert (
            h1["loss"][stable] < p["head_loss_threshold"]
        )  # and its training loss is under the threshold
        assert p["finetune_lr"] * 10 <= p["phase1_lr"] * (1 + 1e-9)
    else:
        assert a["cut"] is None and a["unfrozen_layers"] == 0 and not a["phase2_kept"]


def assert_models_are_the_trained_ones(tuner, hypermodel: TransferHyperModel, dataset) -> None:
    """Every trial's model, as keras-tuner reloads it from its checkpoint, scores what the trial recorded."""
    for trial in tuner.oracle.get_best_trials(len(tuner.oracle.trials)):
        model = tuner.load_model(trial)
        acc, loss = evaluate(model, dataset)
        assert abs(acc - trial.metrics.get_last_value("val_accuracy")) <= 1e-6, trial.trial_id
        assert math.isclose(
            loss, trial.metrics.get_last_value("val_loss"), rel_tol=1e-3, abs_tol=1e-5
        ), trial.trial_id
        assert hypermodel.records[trial.trial_id]["user_attrs"][
            "val_accuracy"
        ] == trial.metrics.get_last_value("val_accuracy")


def test_random_search_saves_the_trained_two_phase_models(
    registry, tiny_dataset, space: SearchSpace, cache_dir: Path, tmp_path: Path
) -> None:
    hypermodel = TransferHyperModel(space, tiny_dataset, registry, NONE, cache_dir)
    tuner = kt.RandomSearch(
        hypermodel,
        objective=hypermodel.objective,
        max_trials=2,
        seed=0,
        directory=str(tmp_path),
        project_name="random",
    )
    hp = tuner.oracle.get_space()
    assert {p.name: type(p).__name__ for p in hp.space} == {
        "backbone": "Choice",
        "head_width": "Choice",
        "dropout": "Float",
        "unfreeze_blocks": "Int",
        "finetune_lr": "Float",
    }
    assert next(p for p in hp.space if p.name == "finetune_lr").sampling == "log"
    tuner.search(verbose=0)

    trials = list(tuner.oracle.trials.values())
    assert [t.status for t in trials] == ["COMPLETED", "COMPLETED"]
    best_trial = tuner.oracle.get_best_trials(1)[0]
    acc, loss = evaluate(tuner.get_best_models(1)[0], tiny_dataset)
    assert abs(acc - best_trial.metrics.get_last_value("val_accuracy")) <= 1e-6
    assert math.isclose(
        loss, best_trial.metrics.get_last_value("val_loss"), rel_tol=1e-3, abs_tol=1e-5
    )
    records = [hypermodel.records[t.trial_id] for t in trials]
    for record in records:
        assert_phase2_only_after_the_gate(record)
    # the tiny space's gate opens: fine-tuning ran, so the checkpoint holds trained base layers too
    assert any(r["user_attrs"]["phase2_kept"] for r in records)
    assert_models_are_the_trained_ones(tuner, hypermodel, tiny_dataset)


def test_hyperband_budgets_map_onto_both_phases(
    registry, tiny_dataset, space: SearchSpace, cache_dir: Path, tmp_path: Path
) -> None:
    hypermodel = TransferHyperModel(space, tiny_dataset, registry, NONE, cache_dir)
    tuner = kt.Hyperband(
        hypermodel,
        objective=hypermodel.objective,
        max_epochs=3,
        factor=3,
        hyperband_iterations=1,
        seed=0,
        directory=str(tmp_path),
        project_name="hyperband",
    )
    tuner.search(verbose=0)

    trials = list(tuner.oracle.trials.values())
    assert trials and all(t.status == "COMPLETED" for t in trials)
    for t in trials:
        record = hypermodel.records[t.trial_id]
        share = t.hyperparameters.values["tuner/epochs"] / 3
        assert record["budget"]["max_epochs"] == 3  # read from the Hyperband oracle
        assert record["trial_params"]["phase1_epochs"] == math.ceil(space.phase1.epochs * share)
        assert record["trial_params"]["phase2_epochs"] == math.ceil(space.phase2.epochs * share)
        assert_phase2_only_after_the_gate(record)
    # a promoted trial starts from the checkpoint keras-tuner loads into it, and still scores what it recorded
    assert any("tuner/trial_id" in t.hyperparameters.values for t in trials)
    assert_models_are_the_trained_ones(tuner, hypermodel, tiny_dataset)


def test_learning_rate_rule_cannot_be_bypassed(
    registry, tiny_dataset, space: SearchSpace, cache_dir: Path, tmp_path: Path
) -> None:
    # model_copy(update=...) skips validation: the hypermodel validates again
    too_fast = space.model_copy(
        update={
            "phase2": space.phase2.model_copy(
                update={"learning_rate": FloatRange(low=1e-4, high=5e-3, log=True)}
            )
        }
    )
    with pytest.raises(UsageError, match=r"at least 10 times below phase1\.learning_rate"):
        TransferHyperModel(too_fast, tiny_dataset, registry, NONE, cache_dir)
    # a value fixed through the tuner's own hyperparameters stops the tuner before any trial
    hypermodel = TransferHyperModel(space, tiny_dataset, registry, NONE, cache_dir)
    fixed = kt.HyperParameters()
    fixed.Fixed("finetune_lr", 5e-3)
    with pytest.raises(kt.errors.FatalValueError, match="at least 10 times below"):
        kt.RandomSearch(
            hypermodel,
            objective=hypermodel.objective,
            max_trials=1,
            hyperparameters=fixed,
            directory=str(tmp_path),
        )
    with pytest.raises(UsageError, match="unknown backbone 'nope'"):
        TransferHyperModel(
            space.model_copy(update={"backbones": ["nope"]}),
            tiny_dataset,
            registry,
            NONE,
            cache_dir,
        )


def test_run_keras_tuner_search_resumes_and_runs_only_the_missing_trial(
    registry, tiny_dataset, space: SearchSpace, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = run_keras_tuner_search(
        space, tiny_dataset, registry, NONE, out, trials=1, tuner="bayesian"
    )
    assert [r["state"] for r in first] == ["COMPLETE"]
    row = first[0]
    assert set(row) >= {"number", "params", "val_accuracy", "val_loss", "state"}
    assert row["number"] == 0 and set(row["params"]) == {
        "backbone",
        "head_width",
        "dropout",
        "unfreeze_blocks",
        "finetune_lr",
    }
    assert (
        row["val_accuracy"] == row["user_attrs"]["val_accuracy"]
        and row["val_loss"] == row["user_attrs"]["val_loss"]
    )

    again = run_keras_tuner_search(
        space, tiny_dataset, registry, NONE, out, trials=2, tuner="bayesian"
    )
    assert [r["number"] for r in again] == [0, 1] and [r["state"] for r in again] == [
        "COMPLETE",
        "COMPLETE",
    ]
    assert again[0] == row  # kept as it was, not rerun (its record carries the time it started)
    assert again[1]["user_attrs"]["started"] > row["user_attrs"]["started"]
    assert (
        again[1]["user_attrs"]["cache"]["phase1"]["built"] is False
    )  # the first trial's activations were reused
    for r in again:
        assert_phase2_only_after_the_gate(r)

    from autotl.export import load_predictor

    folder = out / "keras_tuner"
    predict, names = load_predictor(folder)
    best = max(again, key=lambda r: (r["val_accuracy"], -r["number"]))
    assert names == list(tiny_dataset.class_names)
    probs = predict([tiny_dataset.val.load(i) for i in range(len(tiny_dataset.val))])
    assert (
        abs(float(np.mean(probs.argmax(1) == tiny_dataset.val.labels)) - best["val_accuracy"])
        <= 1e-6
    )
    from autotl.ui import records_table

    assert "leaderboard" in str(records_table(again, 10, "leaderboard: keras-tuner").title)

    with pytest.raises(UsageError, match="with the bayesian tuner"):
        run_keras_tuner_search(space, tiny_dataset, registry, NONE, out, trials=2, tuner="random")
    with pytest.raises(UsageError, match="unknown keras-tuner tuner 'grid'"):
        run_keras_tuner_search(space, tiny_dataset, registry, NONE, out, trials=2, tuner="grid")

    # only the keras-tuner engine searched this run: `autotl report` reports on its study
    from autotl.report import write_report

    rec = json.loads(write_report(out)["json"].read_text())
    assert (
        rec["summary"]["study_name"] == "autotl-keras-tuner"
        and rec["engine"] == "keras-tuner"
        and rec["engines"] is None
    )
    assert (
        rec["summary"]["best"]["val_accuracy"] == best["val_accuracy"]
        and len(rec["leaderboard"]) == 2
    )
    assert (
        rec["evaluation"]["model"].endswith("keras_tuner/best_model.keras")
        and rec["evaluation"]["model_trial"] == rec["summary"]["best"]["number"]
    )
    assert abs(rec["evaluation"]["accuracy"] - best["val_accuracy"]) <= 1e-6


def test_engines_compared_in_one_report(
    registry, tiny_dataset, space: SearchSpace, tmp_path: Path
) -> None:
    """keras-tuner and Optuna search the same space in one run folder; the report compares them."""
    import optuna

    from autotl.engine.optuna_engine import SearchConfig, run_search
    from autotl.report import write_report

    out = tmp_path / "run"
    rows = run_keras_tuner_search(
        space, tiny_dataset, registry, NONE, out, trials=2, tuner="random"
    )
    study = run_search(
        SearchConfig(out=out, space=space, trials=2, weights=NONE), registry, tiny_dataset
    )
    storage = f"sqlite:///{out / 'study.db'}"
    copy = optuna.load_study(study_name="autotl-keras-tuner", storage=storage)
    assert [t.user_attrs["keras_tuner_trial_id"] for t in copy.trials] == [
        r["trial_id"] for r in rows
    ]
    for t, r in zip(copy.trials, rows):
        assert (t.state.name, t.value, t.params) == ("COMPLETE", r["val_accuracy"], r["params"])
        # the attributes an Optuna trial of autotl carries, and the Optuna engine's distributions for the same space
        assert set(study.trials[0].user_attrs) - {
            "worker",
            "weights_path",
            "stage",
            "session",
            "layers_artifact",
            "seed",  # what a refit replays (engine.refit): the Optuna engine's trials only
        } <= set(t.user_attrs)
        assert t.distributions == study.trials[0].distributions
        assert (
            t.user_attrs["history"] == r["user_attrs"]["history"]
            and t.user_attrs["gate"] == r["user_attrs"]["gate"]
        )
    assert (
        copy.trials[0].distributions["finetune_lr"].log
        and type(copy.trials[0].distributions["backbone"]).__name__ == "CategoricalDistribution"
    )

    rec = json.loads(write_report(out)["json"].read_text())
    assert rec["summary"]["study_name"] == "autotl"
    engines = {s["engine"]: s for s in rec["engines"]["studies"]}
    assert [s["study_name"] for s in rec["engines"]["studies"]] == ["autotl", "autotl-keras-tuner"]
    values = {
        "optuna": [t.value for t in study.trials],
        "keras-tuner": [r["val_accuracy"] for r in rows],
    }
    for engine, s in engines.items():
        assert (s["trials"], s["complete"], s["failed"]) == (2, 2, 0), engine
        assert s["best"]["val_accuracy"] == max(values[engine]), engine
        lo, hi = s["best"]["ci95"]
        assert lo <= s["best"]["val_accuracy"] <= hi and s["val_images"] == len(tiny_dataset.val)
        assert s["mean_val_accuracy"] == pytest.approx(sum(values[engine]) / 2) and s[
            "median_val_accuracy"
        ] == pytest.approx(sum(values[engine]) / 2)
        assert s["seconds_in_trials"] > 0 and len(s["history"]) == 2
    assert engines["optuna"]["reported"] and not engines["keras-tuner"]["reported"]
    assert "engines.png" in rec["figures"] and (out / rec["figures"]["engines.png"]).is_file()
    assert (
        "## 7. Engines compared" in (out / "report.md").read_text()
        and 'id="engines"' in (out / "report.html").read_text()
    )

    # the same search again resumes: no trial runs, and none is added twice to the Optuna copy
    assert (
        run_keras_tuner_search(space, tiny_dataset, registry, NONE, out, trials=2, tuner="random")
        == rows
    )
    assert len(optuna.load_study(study_name="autotl-keras-tuner", storage=storage).trials) == 2


def test_a_failed_trial_is_recorded_and_the_search_goes_on(
    registry, tiny_dataset, space: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a trial that cannot go on (TrialFailed, e.g. a backbone giving NaN features): keras-tuner marks it failed, not the search
    from autotl.engine import keras_tuner as akt
    from autotl.errors import TrialFailed

    def failing(*args, **kwargs):
        raise TrialFailed("backbone tiny gives non-finite features")

    monkeypatch.setattr(akt, "train_trial", failing)
    rows = run_keras_tuner_search(
        space, tiny_dataset, registry, NONE, tmp_path / "run", trials=2, tuner="random"
    )
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"]
    assert all("non-finite features" in r["message"] and r["val_accuracy"] is None for r in rows), (
        rows[0]["message"]
    )
    assert not (tmp_path / "run" / "keras_tuner" / "best_model.keras").exists()
    import optuna

    copy = optuna.load_study(
        study_name="autotl-keras-tuner", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    )
    assert [t.state.name for t in copy.trials] == [
        "FAIL",
        "FAIL",
    ] and "non-finite features" in copy.trials[0].user_attrs["fail_reason"]
