"""A search on several objectives with deploy costs, constraints and a test split; choosing from its front; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import COLOURS, TINY_PLUGIN, TINY_SPACE, assert_one_line_error, run_cli, write_images

import autotl
from autotl.errors import UsageError

DEPLOY = "deploy: {threads: 1, warmup: 2, runs: 5}\n"


def space_file(folder: Path, extra: str) -> Path:
    path = folder / "space.yaml"
    path.write_text(TINY_SPACE + DEPLOY + extra)
    return path


def search(data: Path, out: Path, space: Path, trials: int, **kwargs):
    return autotl.search(
        data, out=out, space=space, trials=trials, plugins=[TINY_PLUGIN], weights="none", **kwargs
    )


@pytest.fixture(scope="module")
def front_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """Three trials on accuracy and latency, under a latency bound every tiny model meets, with a test split."""
    root = tmp_path_factory.mktemp("front")
    space = space_file(
        root,
        "objectives: [accuracy, latency_ms]\nconstraints: {latency_ms: 1000}\n"
        "test_fraction: 0.25\nsampler: nsga2\n",
    )
    events: list[dict] = []
    run = search(image_folder, root / "run", space, 3, on_event=events.append)
    return run, space, events


@pytest.mark.slow
def test_a_constraint_on_an_unsearched_deploy_cost_is_measured_and_kept(
    image_folder: Path, tmp_path: Path
) -> None:
    import optuna

    space = space_file(tmp_path, "constraints: {latency_ms: 0.000001}\ntrials: 1\n")
    run = search(image_folder, tmp_path / "run", space, 1, report=False)
    (t,) = run.study.trials
    assert t.state.name == "COMPLETE" and len(t.values) == 1  # accuracy alone is searched
    m = t.user_attrs["metrics"]
    assert m["latency_ms"] > 0.000001 and m["size_mb"] > 0 and m["params"] > 0
    assert t.user_attrs["constraints"] == pytest.approx([m["latency_ms"] - 0.000001])
    if hasattr(optuna.trial.Trial, "set_constraint"):  # Optuna 5: the samplers read the trial's
        assert t.constraints == {"latency_ms": pytest.approx(m["latency_ms"] - 0.000001)}
    # a constraint on a deploy cost is known before training: pruning stays on (epochs reported)
    assert t.intermediate_values
    assert run.best_trial is None  # it breaks the constraint, so it is never best
    assert not (tmp_path / "run" / "best_model.keras").exists()
    with pytest.raises(UsageError, match=r"none of the 1 complete trials .* meets the constraints"):
        run.export(["keras"], tmp_path / "deploy")


@pytest.mark.slow
def test_several_objectives_record_costs_constraints_and_a_test_split(front_run) -> None:
    run, _, events = front_run
    study = run.study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert not any(t.intermediate_values for t in study.trials)  # no pruning with two objectives
    assert study.user_attrs["constraints"] == {"latency_ms": 1000.0}
    widths = set()
    for t in study.trials:
        m = t.user_attrs["metrics"]
        assert t.values == [m["val_accuracy"], m["latency_ms"]]
        assert {"val_balanced_accuracy", "val_macro_f1", "size_mb", "params"} <= set(m)
        widths.add(t.params["head_width"])
    table = json.loads((run.path / "deploy_costs.json").read_text())
    assert {e["head_width"] for e in table.values()} == widths  # one measurement per shape
    assert any("9 test" in e.get("info", "") for e in events)
    assert study.user_attrs["data"]["counts"]["test"] == {"blue": 3, "green": 3, "red": 3}


@pytest.mark.slow
def test_the_report_shows_the_front_and_the_test_score_once(front_run) -> None:
    run, _, _ = front_run
    record = json.loads((run.path / "report.json").read_text())
    pareto = record["pareto"]
    assert (pareto["y"], pareto["x"]) == ("accuracy", "latency_ms")
    assert pareto["front"] and run.best_trial.number in pareto["front"]
    assert pareto["constraints"][0]["text"] == "latency_ms <= 1000"
    assert (run.path / "report_files" / "pareto.png").is_file()
    test = record["evaluation"]["test"]
    assert test["images"] == 9 and test["split"].startswith("test_fraction=0.25")
    assert test["ci95"][0] <= test["accuracy"] <= test["ci95"][1]
    html = (run.path / "report.html").read_text()
    assert "Pareto front" in html and html.count("test accuracy") == 1
    columns = [c for c in record["leaderboard"][0]["values"]]
    assert columns == ["accuracy", "latency_ms"]


@pytest.mark.slow
def test_export_picks_from_the_front_and_gives_the_test_score(front_run, tmp_path: Path) -> None:
    run, _, _ = front_run
    fastest = min(run.study.trials, key=lambda t: t.user_attrs["metrics"]["latency_ms"])
    bound = fastest.user_attrs["metrics"]["latency_ms"]
    chosen = run.pick(f"latency_ms<={bound}")
    assert chosen.user_attrs["metrics"]["latency_ms"] <= bound
    result = run.export(["keras"], tmp_path / "deploy", pick=f"latency_ms<={bound}")
    assert result.trial == chosen.number
    test = result.parity["test_score"]
    assert test["images"] == 9 and test["validation_accuracy"] is not None
    assert json.loads((tmp_path / "deploy" / "parity.json").read_text())["test_score"] == test
    assert "Test accuracy" in (tmp_path / "deploy" / "MODEL_CARD.md").read_text()
    with pytest.raises(UsageError, match="not both"):
        run.export(["keras"], tmp_path / "x", trial=0, pick="latency_ms<=1")


@pytest.mark.slow
def test_a_resumed_study_keeps_its_objectives(front_run, image_folder: Path) -> None:
    run, space, _ = front_run
    with pytest.raises(UsageError, match="was searched with objectives"):
        search(image_folder, run.path, space, 4, objectives="accuracy,size_mb", report=False)


@pytest.mark.slow
def test_cli_pick_that_no_trial_meets_is_one_line(front_run) -> None:
    run, _, _ = front_run
    proc = run_cli("export", str(run.path), "--pick", "latency_ms<=0.0000001", "--format", "keras")
    assert_one_line_error(proc, "--pick latency_ms<=0.0000001", "no complete trial has", "nearest")
    proc = run_cli("export", str(run.path), "--trial", "0", "--pick", "latency_ms<=1")
    assert_one_line_error(proc, "not both")


def cli_search(data: Path, *args: str):
    return run_cli(
        "search",
        str(data),
        "--plugin",
        TINY_PLUGIN,
        "--weights",
        "none",
        "--backbone",
        "tiny",
        *args,
    )


def test_cli_unknown_objective_is_one_line(image_folder: Path, tmp_path: Path) -> None:
    proc = cli_search(
        image_folder, "--out", str(tmp_path / "run"), "--objectives", "accuracy,speed"
    )
    assert_one_line_error(proc, "--objectives", "unknown objective 'speed'", "latency_ms")
    assert not (tmp_path / "run").exists()  # nothing started, nothing lost


def test_cli_constraint_on_what_is_neither_searched_nor_measured_is_one_line(
    image_folder: Path, tmp_path: Path
) -> None:
    space = space_file(tmp_path, "constraints: {latency: 15}\n")
    proc = cli_search(image_folder, "--space", str(space), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "constraints", "'latency'", "neither searched", "latency_ms")


def test_cli_one_objective_sampler_with_several_objectives_is_one_line(
    image_folder: Path, tmp_path: Path
) -> None:
    space = space_file(tmp_path, "sampler: cmaes\n")
    proc = cli_search(
        image_folder,
        "--space",
        str(space),
        "--objectives",
        "accuracy,params",
        "--out",
        str(tmp_path),
    )
    assert_one_line_error(proc, "cmaes optimises one objective")


def test_cli_test_folder_with_a_class_train_lacks_is_one_line(tmp_path: Path) -> None:
    two = {c: COLOURS[c] for c in ("red", "blue")}
    for part, classes in (("train", two), ("val", two), ("test", COLOURS)):
        write_images(tmp_path / "data" / part, classes, 3)
    proc = cli_search(tmp_path / "data", "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "test", "green", "train/ lacks")


def test_keras_tuner_takes_one_validation_objective(image_folder: Path, tmp_path: Path) -> None:
    space = space_file(tmp_path, "")
    for kwargs in ({"objectives": "accuracy,latency_ms"}, {"objectives": "size_mb"}):
        with pytest.raises(UsageError, match="are the Optuna engine's"):
            search(image_folder, tmp_path / "run", space, 1, engine="keras-tuner", **kwargs)
