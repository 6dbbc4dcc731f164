from __future__ import annotations

from pathlib import Path

import pytest

from autotl.backbones.weights import WeightsSource
from autotl.engine.optuna_engine import SearchConfig, run_search
from autotl.engine.space import load_space, trial_params
from autotl.errors import UsageError
from autotl.run.folder import RunFolder
from autotl.run.storage import load_study, open_study

BEST_MODEL = RunFolder.BEST_MODEL


def config(out: Path, space_file: Path, trials: int) -> SearchConfig:
    space, _ = load_space(space_file)
    return SearchConfig(out=out, space=space, trials=trials, weights=WeightsSource("none"))


def states(study) -> list[str]:
    return [t.state.name for t in study.trials]


def test_trial_params_from_a_fixed_trial(tiny_space_file: Path) -> None:
    import optuna

    space, _ = load_space(tiny_space_file)
    p = trial_params(
        optuna.trial.FixedTrial(
            {
                "backbone": "tiny",
                "head_width": 16,
                "dropout": 0.1,
                "unfreeze_blocks": 2,
                "finetune_lr": 2e-4,
            }
        ),
        space,
    )
    assert (p.backbone, p.head_width, p.unfreeze_blocks, p.finetune_lr, p.phase1_lr) == (
        "tiny",
        16,
        2,
        2e-4,
        1e-2,
    )


def test_search_records_trials_and_resumes_without_rerunning(
    registry, tiny_dataset, tiny_space_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    study = run_search(config(out, tiny_space_file, 2), registry, tiny_dataset)
    assert states(study) == ["COMPLETE", "COMPLETE"]
    t0 = study.trials[0]
    a = t0.user_attrs
    for key in (
        "weights_origin",
        "history",
        "head_stable_epoch",
        "gate",
        "unfrozen_layers",
        "seconds",
        "cut",
        "weights_path",
    ):
        assert key in a, key
    assert set(a["history"]) == {"phase1", "phase2"} and a["history"]["phase1"]["val_loss"]
    assert "phase1" in a["seconds"]
    assert (out / BEST_MODEL).is_file() and (out / "classes.json").is_file()
    # the same command again: nothing to do; a bigger budget: only the missing trial runs
    again = run_search(config(out, tiny_space_file, 2), registry, tiny_dataset)
    assert len(again.trials) == 2
    more = run_search(config(out, tiny_space_file, 3), registry, tiny_dataset)
    assert len(more.trials) == 3
    assert more.trials[0].datetime_start == t0.datetime_start and more.trials[0].value == t0.value


def test_interrupted_trial_is_marked_failed_and_the_rerun_completes(
    registry, tiny_dataset, tiny_space_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    seen: list[int] = []

    def ctrl_c(event: dict) -> None:  # Ctrl-C in the middle of the second trial's head training
        if event.get("trial") == 1 and event.get("epoch") == 2:
            seen.append(1)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config(out, tiny_space_file, 2), registry, tiny_dataset, ctrl_c)
    study = load_study(f"sqlite:///{out / 'study.db'}", "autotl")
    assert seen and states(study) == ["COMPLETE", "FAIL"]
    first = study.trials[0]
    resumed = run_search(config(out, tiny_space_file, 2), registry, tiny_dataset)
    assert states(resumed) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert resumed.trials[0].datetime_complete == first.datetime_complete


def test_bad_storage_url_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot open storage 'nosuchdb://x'"):
        open_study("nosuchdb://x", "autotl")
    with pytest.raises(UsageError, match="cannot open storage"):
        open_study(f"sqlite:///{tmp_path}/missing/dir/study.db", "autotl")
    with pytest.raises(UsageError, match=r"cannot open storage 'runs/study\.db'"):
        open_study("runs/study.db", "autotl")


def test_other_data_in_the_same_run_folder_is_refused(
    registry, tiny_dataset, tiny_space_file: Path, tmp_path: Path, image_folder: Path
) -> None:
    from autotl.data.dataset import load_folder

    out = tmp_path / "run"
    run_search(config(out, tiny_space_file, 1), registry, tiny_dataset)
    other = load_folder(image_folder, val_fraction=0.5, seed=3)
    with pytest.raises(UsageError, match="holds a search on other data"):
        run_search(config(out, tiny_space_file, 1), registry, other)


def test_best_model_is_the_best_trial_rebuilt_from_its_stored_layers(
    registry, tiny_dataset, tiny_space_file: Path, tmp_path: Path
) -> None:
    """Only trained layers are stored per trial; the assembled model must score what the trial scored."""
    import json

    import keras
    import numpy as np

    out = tmp_path / "run"
    study = run_search(config(out, tiny_space_file, 2), registry, tiny_dataset)
    assert json.loads((out / "best_model.json").read_text())["trial"] == study.best_trial.number
    model = keras.saving.load_model(out / BEST_MODEL, safe_mode=True)
    images = np.concatenate(list(tiny_dataset.val.batches((32, 32))))
    accuracy = float(
        np.mean(model.predict(images, verbose=0).argmax(axis=1) == tiny_dataset.val.labels)
    )
    assert accuracy == pytest.approx(study.best_value, abs=1e-6)


def test_a_resumed_study_draws_new_points(
    registry, tiny_dataset, tiny_space_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run_search(config(out, tiny_space_file, 1), registry, tiny_dataset)
    study = run_search(config(out, tiny_space_file, 2), registry, tiny_dataset)
    first, second = (t.params for t in study.trials)
    assert (
        first != second
    )  # the sampler's seed moves on with the study, so resuming does not repeat trial 0


def test_two_stage_search_screens_then_fine_tunes_the_best_settings_in_turn(
    registry, tiny_dataset, tiny_space_file: Path, tmp_path: Path
) -> None:
    import optuna
    import yaml

    raw = yaml.safe_load(tiny_space_file.read_text())
    raw["screening"] = {"trials": 4, "finalists": 2}
    tiny_space_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    study = run_search(config(out, tiny_space_file, 5), registry, tiny_dataset)
    stages = [t.user_attrs["stage"] for t in study.trials]
    assert stages[:4] == ["screen"] * 4
    for t in study.trials[:4]:  # phase 1 only: no fine-tuning settings drawn, none run
        assert "unfreeze_blocks" not in t.params and not t.user_attrs["history"]["phase2"]
    # resumed with a bigger budget: the finalists, best screened first, each in turn
    study = run_search(config(out, tiny_space_file, 7), registry, tiny_dataset)
    screened = [t for t in study.trials[:4] if t.state == optuna.trial.TrialState.COMPLETE]
    best_two = sorted(screened, key=lambda t: (-t.value, t.user_attrs["val_loss"], t.number))[:2]
    finals = study.trials[4:]
    assert [t.user_attrs["stage"] for t in finals] == ["finalist"] * 3
    assert [t.user_attrs["finalist_of"] for t in finals] == [
        best_two[0].number,
        best_two[1].number,
        best_two[0].number,
    ]
    for t in finals:
        source = study.trials[t.user_attrs["finalist_of"]]
        assert {k: t.params[k] for k in ("backbone", "head_width", "dropout")} == {
            k: source.params[k] for k in ("backbone", "head_width", "dropout")
        }
        assert "unfreeze_blocks" in t.params and "finetune_lr" in t.params  # drawn by the sampler
        assert t.user_attrs["gate"] != "not asked: unfreeze_blocks is 0"
    assert (
        len(
            [
                t
                for t in study.trials
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            ]
        )
        == 7
    )
