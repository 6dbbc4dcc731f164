"""Refitting a trial whose layers were not kept: it reproduces the search's record or is refused.

One real tiny search (the tiny backbone, both phases, four trials) keeps the
layers of its best trial only; the others are refitted from the feature cache.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import COLOURS, TINY_SPACE, write_images

#: Four trials, one kept; phase 2 opens (high threshold) and dropout varies, so a refit replays both.
TRIALS = 4


@pytest.fixture(scope="module")
def one_kept(tmp_path_factory: pytest.TempPathFactory, registry, tiny_dataset):
    """A finished search that kept one trial's layers, and its study."""
    from autotl.backbones.weights import WeightsSource
    from autotl.engine.optuna_engine import SearchConfig, open_search_study, run_search
    from autotl.engine.space import SearchSpace

    space = SearchSpace.model_validate({**yaml.safe_load(TINY_SPACE), "trials": TRIALS})
    out = tmp_path_factory.mktemp("refit") / "run"
    cfg = SearchConfig(
        out=out, space=space, trials=TRIALS, weights=WeightsSource("none"), keep_models=1
    )
    cfg.run.prepare()
    run_search(cfg, registry, tiny_dataset)
    return cfg.run, open_search_study(cfg)


def _not_kept(run, study) -> list:
    """The trials whose layers the search did not keep (all but the best), each forgotten again if an
    earlier test refitted it."""
    from autotl.scoring.objective import ranked_trials

    ranked = ranked_trials(study)
    for t in ranked[1:]:
        run.drop_trial(t.number)
    assert run.kept_trials() == [ranked[0].number]
    return ranked[1:]


@pytest.mark.slow
def test_a_refit_reproduces_the_recorded_score_and_is_stored(one_kept, registry, tiny_dataset):
    from autotl.engine.refit import REFIT_FILE, refit_trial, stored_refit
    from autotl.scoring.objective import trial_metrics

    run, study = one_kept
    missing = _not_kept(run, study)
    assert len(missing) == TRIALS - 1 and all(run.trial_layers(t) is None for t in missing)
    assert run.record()["cache"]["dtype"] == "float16"
    assert any(t.user_attrs["phase2_kept"] for t in missing)  # a refit replays phase 2 too
    for trial in missing:
        refit = refit_trial(run, study, trial, tiny_dataset, registry=registry)
        recorded = trial_metrics(trial)
        assert refit.passed, refit.reason
        assert refit.refitted["val_accuracy"] == recorded["val_accuracy"]
        assert refit.refitted["val_loss"] == pytest.approx(recorded["val_loss"], abs=1e-4)
        assert refit.seconds > 0 and "refitted in" in refit.line()
        assert run.trial_layers(trial) is not None
        assert json.loads((run.trial_dir(trial.number) / REFIT_FILE).read_text())["passed"]
        again = stored_refit(run, trial.number)
        assert again is not None and again.reused and "refitted earlier" in again.line()


@pytest.mark.slow
def test_a_refitted_model_scores_on_images_what_the_search_recorded(
    one_kept, registry, tiny_dataset
):
    """Assembled from its refitted layers, the model classifies the validation images as recorded."""
    import keras

    from autotl.engine.refit import refit_trial
    from autotl.run.trial_models import trial_model
    from autotl.scoring.objective import trial_metrics

    run, study = one_kept
    trial = next(t for t in _not_kept(run, study) if t.user_attrs["phase2_kept"])
    assert refit_trial(run, study, trial, tiny_dataset, registry=registry).passed
    model = keras.saving.load_model(trial_model(run, study, trial, registry), safe_mode=True)
    size = registry.backbone(trial.params["backbone"]).input_size
    probs = np.concatenate([np.asarray(model(b)) for b in tiny_dataset.val.batches(size, 32)])
    y = np.asarray(tiny_dataset.val.labels)
    hits = int((probs.argmax(1) == y).sum())
    assert abs(hits - round(trial_metrics(trial)["val_accuracy"] * len(y))) <= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda t: t.user_attrs.update(seed=t.user_attrs["seed"] + 1), id="seed"),
        pytest.param(lambda t: t.params.update(head_width=24 - t.params["head_width"]), id="width"),
        pytest.param(
            lambda t: t.params.update(finetune_lr=t.params["finetune_lr"] * 3), id="finetune_lr"
        ),
    ],
)
def test_a_tampered_record_is_refused_and_nothing_stored(one_kept, registry, tiny_dataset, tamper):
    from autotl.engine.refit import refit_trial

    run, study = one_kept
    trial = next(t for t in _not_kept(run, study) if t.user_attrs["phase2_kept"])
    forged = copy.deepcopy(trial)
    tamper(forged)
    refit = refit_trial(run, study, forged, tiny_dataset, registry=registry)
    assert not refit.passed
    assert "the search recorded" in refit.reason or "in the search" in refit.reason
    assert "\n" not in refit.line() and "refused" in refit.line()
    assert run.trial_layers(trial) is None  # never stored, so never used


@pytest.mark.slow
def test_the_ensemble_chooses_among_the_top_k_refitting_what_was_not_kept(
    one_kept, registry, tiny_dataset
):
    from autotl.ensemble import select_ensemble

    run, study = one_kept
    _not_kept(run, study)
    sel = select_ensemble(
        run, study, k=TRIALS, tta=None, dataset=tiny_dataset, registry=registry, weights=None
    )
    assert len(sel.candidates) == TRIALS  # every top trial, though the search kept one
    assert len(sel.refits) == TRIALS - 1 and all(r["passed"] for r in sel.refits.values())
    assert sum("refitted in" in n for n in sel.notes) == TRIALS - 1
    # each refitted member is marked in the title and in the ensemble row (the best trial was kept)
    assert _table(sel).count("(refitted)") == 2 * sum(n in sel.refits for n in sel.members)
    again = select_ensemble(
        run, study, k=TRIALS, tta=None, dataset=tiny_dataset, registry=registry, weights=None
    )
    assert all(r["reused"] for r in again.refits.values())  # stored: not refitted twice
    assert again.members == sel.members


def _table(selection) -> str:
    """``autotl ensemble``'s table as text."""
    from rich.console import Console

    from autotl.ui import ensemble_table

    console = Console(record=True, width=240)
    console.print(ensemble_table(selection))
    return console.export_text()


def _forge_seed(run, number: int) -> None:
    """Change trial ``number``'s recorded seed in the study's database, as a tampered record would."""
    import sqlite3

    with sqlite3.connect(run.study_db) as db:
        (trial_id,) = db.execute(
            "SELECT trial_id FROM trials WHERE number = ?", (number,)
        ).fetchone()
        changed = db.execute(
            "UPDATE trial_user_attributes SET value_json = '12345' WHERE trial_id = ? AND key = 'seed'",
            (trial_id,),
        ).rowcount
    assert changed == 1


@pytest.mark.slow
def test_a_refused_refit_leaves_the_member_out_and_says_so(
    one_kept, registry, tiny_dataset, tmp_path: Path
):
    """A trial whose stored record was tampered with (its seed) is refitted, refused and left out."""
    import shutil

    from autotl.ensemble import select_ensemble
    from autotl.run.folder import RunFolder
    from autotl.scoring.objective import ranked_trials

    run = RunFolder(shutil.copytree(one_kept[0].path, tmp_path / "run"))
    study, _ = run.open_study()
    victim = ranked_trials(study)[-1]
    run.drop_trial(victim.number)  # whether or not an earlier test refitted it
    _forge_seed(run, victim.number)
    study, _ = run.open_study()
    sel = select_ensemble(
        run, study, k=TRIALS, tta=None, dataset=tiny_dataset, registry=registry, weights=None
    )
    assert victim.number not in sel.candidates and victim.number not in sel.members
    assert not sel.refits[victim.number]["passed"] and run.trial_layers(victim.number) is None
    assert any(f"trial {victim.number} left out" in n for n in sel.notes)


# --------------------------------------------------------------------------- autotl export --trial N


def _export(run_dir: Path, trial: int, out: Path, *more: str) -> int:
    """``autotl export RUN --trial N --format keras --out OUT`` in this process, with its exit code."""
    from autotl.cli import main

    argv = ["export", str(run_dir), "--trial", str(trial), "--format", "keras", "--out", str(out)]
    return main([*argv, "--plugin", "autotl_tiny", *more])


def _error_line(err: str) -> str:
    """The one ``autotl: error:`` line a refused command printed."""
    lines = [line for line in err.splitlines() if line.startswith("autotl: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _copy(run, tmp_path: Path, forget: int):
    """A copy of the run, with its own feature cache (run.json names it), that forgot ``forget``'s layers."""
    import shutil

    from autotl.run.folder import RunFolder

    copy = RunFolder(shutil.copytree(run.path, tmp_path / "run"))
    shutil.copytree(run.record()["cache"]["dir"], copy.path / "own-cache")
    record = json.loads(copy.run_file.read_text())
    record["cache"]["dir"] = str(copy.path / "own-cache")
    copy.run_file.write_text(json.dumps(record))
    copy.drop_trial(forget)
    return copy


@pytest.mark.slow
def test_export_of_a_trial_not_kept_refits_it_once_with_parity(
    one_kept, tmp_path: Path, capfd
) -> None:
    """Exported like a kept trial, its model scoring what the search recorded; a second export reuses it."""
    from autotl.engine.refit import REFIT_FILE
    from autotl.scoring.objective import trial_metrics

    run, study = one_kept
    trial = next(t for t in _not_kept(run, study) if t.user_attrs["phase2_kept"])
    assert _export(run.path, trial.number, tmp_path / "out") == 0
    err = capfd.readouterr().err
    assert f"trial {trial.number} refitted in" in err and "from the feature cache" in err
    parity = json.loads((tmp_path / "out" / "parity.json").read_text())
    score = parity["search_score"]
    assert score["passed"] and score["accuracy"] == trial_metrics(trial)["val_accuracy"]
    assert parity["trial"] == trial.number and (tmp_path / "out" / "model.keras").is_file()
    refit = parity["refit"]  # what the refit measured, beside what the export re-measured
    assert refit["passed"] and refit["refitted"]["val_accuracy"] == score["accuracy"]
    assert "refitted from the feature cache" in (tmp_path / "out" / "MODEL_CARD.md").read_text()
    refit_file = run.trial_dir(trial.number) / REFIT_FILE
    stamp = refit_file.stat().st_mtime_ns
    assert _export(run.path, trial.number, tmp_path / "again") == 0
    err = capfd.readouterr().err
    assert f"trial {trial.number} refitted earlier" in err and "refitting" not in err
    assert refit_file.stat().st_mtime_ns == stamp  # not trained a second time
    again = json.loads((tmp_path / "again" / "parity.json").read_text())["search_score"]
    assert again["passed"] and again["accuracy"] == score["accuracy"]


@pytest.mark.slow
def test_export_of_a_tampered_trial_is_refused_in_one_line(one_kept, tmp_path: Path, capfd) -> None:
    from autotl.scoring.objective import ranked_trials

    run, study = one_kept
    victim = ranked_trials(study)[-1]
    copy = _copy(run, tmp_path, victim.number)
    _forge_seed(copy, victim.number)
    assert _export(copy.path, victim.number, tmp_path / "out") == 2
    line = _error_line(capfd.readouterr().err)
    assert f"trial {victim.number}'s layers were not kept" in line and "refused" in line
    assert "the search recorded" in line or "in the search" in line
    assert not (tmp_path / "out").exists() and copy.trial_layers(victim.number) is None


@pytest.mark.slow
def test_export_without_refit_the_cache_or_the_data_says_what_to_do(
    one_kept, tmp_path: Path, capfd
) -> None:
    import shutil

    run, study = one_kept
    victim = _not_kept(run, study)[0]
    copy = _copy(run, tmp_path, victim.number)
    assert _export(copy.path, victim.number, tmp_path / "out", "--no-refit") == 2
    line = _error_line(capfd.readouterr().err)
    assert f"trial {victim.number} has no saved model here" in line and "--keep-models" in line
    other = write_images(tmp_path / "other", COLOURS, 10)  # the same classes, other images
    assert _export(copy.path, victim.number, tmp_path / "out", "--data", str(other)) == 2
    line = _error_line(capfd.readouterr().err)
    assert "cannot be refitted" in line and "is not the search's" in line and "--data" in line
    shutil.rmtree(copy.path / "own-cache")
    assert _export(copy.path, victim.number, tmp_path / "out") == 2
    line = _error_line(capfd.readouterr().err)
    assert "no longer holds its backbone's features" in line and "--keep-models" in line
    assert not (tmp_path / "out").exists() and copy.trial_layers(victim.number) is None
