"""The run folder's one owner: paths, atomic writes, the best-model marker and whose data it holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotl.errors import UsageError
from autotl.run.folder import KERAS_TUNER, OPTUNA, RunFolder, atomic_write


def test_paths_of_both_engines(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.best_model() == tmp_path / "best_model.keras"
    assert run.best_model(KERAS_TUNER) == tmp_path / "keras_tuner" / "best_model.keras"
    assert run.trial_dir(7) == tmp_path / "trials" / "0007"
    assert run.default_storage_url() == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    assert RunFolder.study_name("autotl", KERAS_TUNER) == "autotl-keras-tuner"
    assert RunFolder.engine_of("x-keras-tuner") == (KERAS_TUNER, "x") and RunFolder.engine_of(
        "x"
    ) == (OPTUNA, "x")


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.json", "{}")
    atomic_write(tmp_path / "a.json", b"[1]")
    assert json.loads((tmp_path / "a.json").read_text()) == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_claim_ties_the_folder_to_one_data_set(
    tiny_dataset, image_folder: Path, tmp_path: Path
) -> None:
    from autotl.data.dataset import load_folder

    run = RunFolder(tmp_path / "run")
    run.claim(tiny_dataset, {"command": "autotl search x"})
    assert (
        run.record()["data_fingerprint"] == tiny_dataset.fingerprint
        and run.record()["command"] == "autotl search x"
    )
    assert run.class_names() == list(tiny_dataset.class_names)
    run.claim(
        tiny_dataset, {"command": "again"}
    )  # a resume: the same data is welcome, the record is kept
    assert run.record()["command"] == "autotl search x"
    with pytest.raises(UsageError, match="holds a search on other data"):
        run.claim(load_folder(image_folder, val_fraction=0.5, seed=9), {})
    run.claim(tiny_dataset, {}, engine=KERAS_TUNER, must_match={"tuner": "random"})
    with pytest.raises(UsageError, match="holds a keras-tuner search with the random tuner"):
        run.claim(tiny_dataset, {}, engine=KERAS_TUNER, must_match={"tuner": "bayesian"})


def test_best_marker_names_the_trial(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    src = tmp_path / "m.keras"
    src.write_bytes(b"model")
    assert run.best_trial_number() is None
    run.install_best(src, 4, {"head_width": 8})
    assert run.best_model().read_bytes() == b"model" and run.best_trial_number() == 4


def test_trial_layers_are_stored_and_dropped(tmp_path: Path) -> None:
    import numpy as np

    run = RunFolder(tmp_path)
    rel = run.save_trial_layers(3, {"head_dense": [np.ones((2, 2)), np.zeros(2)]})
    assert rel == "trials/0003/trained_layers.npz" and run.trial_layers(3) == tmp_path / rel
    assert run.kept_trials() == [3]
    run.drop_trial(3)
    assert run.trial_layers(3) is None and run.kept_trials() == []


def test_not_a_run_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        RunFolder(tmp_path / "nope").require()
    with pytest.raises(UsageError, match=r"has no study\.db"):
        RunFolder(tmp_path).require()
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        RunFolder(tmp_path / "f").require()


def test_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot write to run folder"):
        RunFolder(tmp_path / "file" / "run").prepare()
