"""The Python API a notebook uses: autotl.search(...) -> Run, and Run(path) on any run folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_PLUGIN

import autotl


@pytest.fixture(scope="module")
def api_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    from helpers import TINY_SPACE

    root = tmp_path_factory.mktemp("api")
    (root / "space.yaml").write_text(TINY_SPACE)
    events: list[dict] = []
    run = autotl.search(
        image_folder,
        out=root / "run",
        space=root / "space.yaml",
        trials=2,
        plugins=[TINY_PLUGIN],
        weights="none",
        on_event=events.append,
    )
    return run, events


def test_search_returns_a_run_with_its_study_and_best_trial(api_run) -> None:
    run, events = api_run
    assert isinstance(run, autotl.Run)
    assert [t.state.name for t in run.study.trials] == ["COMPLETE", "COMPLETE"]
    best = run.best_trial
    assert best.number in (0, 1) and run.best_value == max(t.values[0] for t in run.study.trials)
    assert run.class_names == ["blue", "green", "red"]
    # progress went to the caller's callback, not to a terminal
    assert any(e.get("start") for e in events) and sum("finished" in e for e in events) == 2
    assert run.report_paths and run.report_paths["html"].is_file()
    # the run records every option the search was given (autotl.SearchOptions), defaults included
    options = run.folder.record()["options"]
    assert set(options) == set(autotl.SearchOptions.model_fields)
    assert (
        options["trials"] == 2
        and options["plugins"] == [TINY_PLUGIN]
        and options["heartbeat"] == 30
    )


def test_trials_dataframe_is_optunas(api_run) -> None:
    frame = api_run[0].trials_dataframe()
    assert list(frame["number"]) == [0, 1] and "params_backbone" in frame.columns


def test_best_model_predict_and_a_reopened_run_agree(api_run, image_folder: Path) -> None:
    import numpy as np

    run, _ = api_run
    model = run.best_model()
    assert model.output_shape[-1] == 3
    files = [*sorted((image_folder / "red").glob("*.png"))[:3], image_folder / "missing.png"]
    preds = run.predict(files)
    assert [p[0] for p in preds] == [str(f) for f in files]
    assert preds[-1][2] is None and "missing" in preds[-1][1]
    again = autotl.Run(run.path)  # another process would do the same
    assert again.best_trial.number == run.best_trial.number
    assert again.predict(files[:3]) == preds[:3]
    assert (
        all(0.0 <= p[2] <= 1.0 for p in preds[:3]) and np.isfinite([p[2] for p in preds[:3]]).all()
    )


def test_export_and_lineage_through_the_run(api_run, tmp_path: Path) -> None:
    run, _ = api_run
    result = run.export(["keras"], tmp_path / "deploy")
    assert result.trial == run.best_trial.number and (tmp_path / "deploy" / "model.keras").is_file()
    record = run.lineage(tmp_path / "deploy" / "model.keras")
    assert record["kind"] == "export" and record["trial_number"] == run.best_trial.number
    assert run.lineage()["kind"] == "best_model"


def test_resume_through_the_api_adds_only_the_missing_trial(api_run, image_folder: Path) -> None:
    run, _ = api_run
    more = autotl.search(
        image_folder,
        out=run.path,
        space=run.path / ".." / "space.yaml",
        trials=3,
        plugins=[TINY_PLUGIN],
        weights="none",
        report=False,
    )
    assert (
        len(more.study.trials) == 3
        and more.study.trials[0].datetime_start == run.study.trials[0].datetime_start
    )


def test_bad_arguments_are_usage_errors(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(autotl.UsageError, match="unknown engine"):
        autotl.search(image_folder, engine="grid")
    with pytest.raises(autotl.UsageError, match="either DATA_DIR or --sample"):
        autotl.search(None, plugins=[TINY_PLUGIN], weights="none", space="fast")
    with pytest.raises(autotl.UsageError, match="does not exist"):
        autotl.Run(tmp_path / "nope")
