"""Lineage in the study's database: record a model file, find it again by its bytes."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import call_cli

from autotl.errors import UsageError
from autotl.run.lineage import ARTIFACTS_TABLE, LINEAGE_TABLE, find_model, list_models, record_model

DATA = {"source": "/data/colours", "fingerprint": "f" * 64, "class_names": ["a", "b"]}


def trial(number: int = 3, value: float = 0.875) -> SimpleNamespace:
    """What an Optuna FrozenTrial offers: number, params, user_attrs, value."""
    return SimpleNamespace(
        number=number,
        value=value,
        params={
            "backbone": "tiny",
            "head_width": 16,
            "dropout": 0.1,
            "unfreeze_blocks": 2,
            "finetune_lr": 2e-4,
        },
        user_attrs={
            "plugin": "autotl_tiny",
            "weights_origin": "/w/tiny.weights.h5",
            "weights_sha256": "a" * 64,
            "val_loss": 0.31,
            "head_stable_epoch": 7,
            "gate": "passed",
            "phase2_kept": True,
            "history": {"phase1": {"val_loss": [1.0] * 12}, "phase2": {"val_loss": [0.5] * 3}},
            "seconds": {"phase1": 1.5, "phase2": 2.0},
            "seconds_total": 4.0,
        },
    )


@pytest.fixture
def run(tmp_path: Path) -> tuple[str, Path]:
    """A run folder with a study.db and a trial's model file (any bytes do: lineage only hashes them)."""
    folder = tmp_path / "run"
    model = folder / "trials" / "0003" / "model.keras"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"PK fake keras zip " * 100)
    return f"sqlite:///{folder / 'study.db'}", model


def test_record_then_find_by_path_and_by_a_copy(run, tmp_path: Path) -> None:
    url, model = run
    artifact = record_model(url, "autotl", trial(), model, "trial_model", data=DATA)
    found = find_model(url, model)
    assert found is not None and found["artifact_id"] == artifact
    assert (found["kind"], found["trial_number"], found["study_name"], found["path"]) == (
        "trial_model",
        3,
        "autotl",
        str(model.resolve()),
    )
    assert (found["backbone"], found["plugin"], found["weights_sha256"]) == (
        "tiny",
        "autotl_tiny",
        "a" * 64,
    )
    assert (found["data_fingerprint"], found["data_source"]) == (
        DATA["fingerprint"],
        DATA["source"],
    )
    assert found["params"]["finetune_lr"] == 2e-4 and found["metrics"]["val_accuracy"] == 0.875
    assert (
        found["metrics"]["epochs"] == {"phase1": 12, "phase2": 3}
        and found["seconds"]["total"] == 4.0
    )
    assert (
        found["autotl_version"]
        and "optuna" in found["versions"]
        and found["created"].endswith("+00:00")
    )
    copy = tmp_path / "elsewhere" / "renamed.keras"
    copy.parent.mkdir()
    shutil.copyfile(model, copy)
    assert find_model(url, copy)["artifact_id"] == artifact


def test_unknown_file_is_none_and_reading_creates_no_table(run, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, inspect

    url, model = run
    assert find_model(url, model) is None and list_models(url) == []  # no database yet
    assert not (model.parents[2] / "study.db").exists()  # and reading did not create one
    create_engine(url).connect().close()  # an empty database: no tables
    assert find_model(url, model) is None and list_models(url) == []
    assert not inspect(create_engine(url)).has_table(ARTIFACTS_TABLE)
    record_model(url, "autotl", trial(), model, data=DATA)
    other = tmp_path / "other.keras"
    other.write_bytes(b"other bytes")
    assert find_model(url, other) is None
    with pytest.raises(UsageError, match="does not exist"):
        find_model(url, tmp_path / "missing.keras")


def test_best_model_copy_and_repeats(run) -> None:
    url, model = run
    first = record_model(url, "autotl", trial(), model, "trial_model", data=DATA)
    assert (
        record_model(url, "autotl", trial(), model, "trial_model", data=DATA) == first
    )  # idempotent
    best = model.parents[2] / "best_model.keras"
    shutil.copyfile(model, best)
    second = record_model(url, "autotl", trial(), best, "best_model", data=DATA)
    assert second != first
    assert (
        find_model(url, best)["kind"] == "best_model"
        and find_model(url, model)["kind"] == "trial_model"
    )
    assert {s["kind"] for s in find_model(url, best)["same_bytes"]} == {"trial_model", "best_model"}
    assert [m["artifact_id"] for m in list_models(url, "autotl")] == [
        second,
        first,
    ] and list_models(url, "other") == []
    with pytest.raises(ValueError, match="kind must be one of"):
        record_model(url, "autotl", trial(), model, "checkpoint")


def test_data_comes_from_the_study_when_not_given(run) -> None:
    import optuna

    url, model = run
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name="s1", direction="maximize")
    study.set_user_attr("data", DATA)
    record_model(url, "s1", trial(), model)
    assert find_model(url, model)["data_fingerprint"] == DATA["fingerprint"]


def test_concurrent_workers_create_the_tables_once(run, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, func, inspect, select, table

    url, _ = run
    files = []
    for i in range(4):
        f = tmp_path / f"m{i}.keras"
        f.write_bytes(f"model {i}".encode())
        files.append(f)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            record_model(url, "autotl", trial(number=i), files[i], data=DATA)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    engine = create_engine(url)
    assert {ARTIFACTS_TABLE, LINEAGE_TABLE} <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table(LINEAGE_TABLE))).scalar() == 4


def cli(*argv: str) -> int:
    return call_cli("lineage", *argv)


def test_cli_answers_in_one_line(run, tmp_path: Path, capsys) -> None:
    url, model = run
    record_model(url, "autotl", trial(), model, data=DATA)
    # default storage: study.db two folders up (run/trials/0003/model.keras)
    assert cli(str(model)) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    for fragment in (
        "trial_model of trial 3 in study 'autotl'",
        "backbone tiny (plugin autotl_tiny)",
        "weights /w/tiny.weights.h5 sha256 aaaaaaaaaaaa",
        "data ffffffffffff from /data/colours",
        "val_accuracy 0.8750",
        "autotl ",
    ):
        assert fragment in out, out
    copy = tmp_path / "copied.keras"  # outside the run folder: --storage says where to look
    shutil.copyfile(model, copy)
    assert cli(str(copy), "--storage", url) == 0 and "trial 3" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"no study\.db beside"):
        cli(str(copy))
    other = model.parent / "other.keras"
    other.write_bytes(b"not recorded")
    with pytest.raises(UsageError, match="no lineage recorded for") as exc:
        cli(str(other))
    assert "\n" not in str(exc.value)
    with pytest.raises(UsageError, match="does not exist"):
        cli(str(tmp_path / "nope.keras"))


def test_an_ensemble_file_is_recorded_once_per_member_and_described_with_each(
    run, tmp_path: Path
) -> None:
    from autotl.run.lineage import describe

    url, model = run
    other = trial(5, 0.9)
    other.params = {**other.params, "backbone": "tiny2"}
    other.user_attrs = {**other.user_attrs, "weights_sha256": "b" * 64}
    ids = [
        record_model(url, "autotl", t, model, "ensemble_export", data=DATA)
        for t in (trial(), other, trial())  # recording again returns the first id
    ]
    assert ids[0] != ids[1] and ids[2] == ids[0]
    found = find_model(url, model)
    assert [(m["trial_number"], m["backbone"], m["weights_sha256"]) for m in found["members"]] == [
        (3, "tiny", "a" * 64),
        (5, "tiny2", "b" * 64),
    ]
    line = describe(found, "model.keras")
    assert "ensemble export of trials 3, 5" in line and "tiny2" in line and "bbbbbbbbbbbb" in line
    single = tmp_path / "single.keras"
    single.write_bytes(b"another model")
    record_model(url, "autotl", trial(), single, "export", data=DATA)
    assert find_model(url, single)["members"] == []
