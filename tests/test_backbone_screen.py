"""Backbone screening: LogME, the stratified sample, the decision rule, and the stage inside a real search.

The searches use the tiny plugin and ``tiny_blind`` (the same network blind to
its pixels: worthless features that load and pass every check) on generated
images, with a sample smaller than the data so the sample stage and the full
caches are separate builds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import COLOURS, TINY_PLUGIN, TINY_SPACE, write_images

from autotl.backbones.weights import WeightsSource
from autotl.engine.backbone_screen import DECISION_KEY, RESULT_KEY, decide
from autotl.engine.optuna_engine import SearchConfig, run_search
from autotl.engine.space import BackboneScreening, SearchSpace, apply_backbone_screening
from autotl.errors import UsageError
from autotl.run.folder import RunFolder
from autotl.run.stages import claim, read_all
from autotl.scoring.logme import evidence, logme
from autotl.scoring.objective import ranked_trials

BLIND = "autotl_tiny_blind"


# -- LogME


def test_logme_evidence_is_the_gaussian_log_likelihood_of_the_labels() -> None:
    """The SVD form equals log N(y | 0, I/beta + F F^T/alpha), written out directly."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(12, 20))
    y = (rng.random(12) > 0.5).astype(float)
    alpha, beta = 0.7, 2.3
    cov = np.eye(12) / beta + f @ f.T / alpha
    _sign, logdet = np.linalg.slogdet(cov)
    direct = -0.5 * (y @ np.linalg.solve(cov, y) + logdet + 12 * np.log(2 * np.pi))
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    assert evidence(s * s, u.T @ y, float(y @ y), 12, 20, alpha, beta) == pytest.approx(direct)


def test_logme_ranks_features_that_separate_the_classes_above_noise() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 150)
    separating = np.hstack([np.eye(3)[labels] * 4, rng.normal(size=(150, 30))])
    separating += rng.normal(size=separating.shape)
    noise = rng.normal(size=(150, 33))
    assert logme(separating, labels) > logme(noise, labels) + 0.2
    with pytest.raises(ValueError, match="n x d features"):
        logme(noise[:, 0], labels)


# -- the sample


def test_the_sample_is_stratified_seeded_and_the_data_itself_when_small(tiny_dataset) -> None:
    from autotl.data.sample import is_sample, stratified_sample

    total = len(tiny_dataset.train) + len(tiny_dataset.val)
    a = stratified_sample(tiny_dataset, 24, seed=3)
    b = stratified_sample(tiny_dataset, 24, seed=3)
    c = stratified_sample(tiny_dataset, 24, seed=4)
    assert len(a.train) + len(a.val) == 24 and is_sample(a, tiny_dataset)
    assert a.train.paths == b.train.paths and a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint  # another seed, other images, other cache entries
    for part, full in ((a.train, tiny_dataset.train), (a.val, tiny_dataset.val)):
        assert set(part.paths) <= set(full.paths)
        assert sorted(set(part.labels.tolist())) == [0, 1, 2]  # every class in every split
    assert stratified_sample(tiny_dataset, total, seed=3) is tiny_dataset


def test_a_pilot_is_drawn_from_the_sample_only_when_it_is_at_most_half_of_it(tiny_dataset) -> None:
    from autotl.engine.backbone_screen import pilot_of, sample_of

    def space(sample: int, pilot: int) -> SearchSpace:
        return _space(sample=sample, pilot=pilot)

    sample = sample_of(tiny_dataset, space(48, 20))
    pilot = pilot_of(tiny_dataset, space(48, 20), sample)
    assert pilot is not None and 19 <= len(pilot.train) + len(pilot.val) <= 21
    assert set(pilot.train.paths) <= set(sample.train.paths)
    assert pilot_of(tiny_dataset, space(48, 0), sample) is None  # pilot: 0, one stage
    assert pilot_of(tiny_dataset, space(48, 30), sample) is None  # over half the sample
    # three classes keep two images each in each split: a pilot of 8 is 12, over half of 20
    small = sample_of(tiny_dataset, space(20, 8))
    assert pilot_of(tiny_dataset, space(20, 8), small) is None


# -- the decision


def _result(accuracy: float, logme_value: float, n: int = 100, chance: float = 0.25) -> dict:
    return {"accuracy": accuracy, "val_images": n, "logme": logme_value, "chance": chance}


def test_margin_rule_keeps_what_is_not_shown_worse_and_drops_the_rest() -> None:
    results = {
        "good": _result(0.90, 1.0),
        "close": _result(0.86, 0.8),
        "chance": _result(0.34, -0.9),
        "broken": {"error": "ValueError: bad weights"},
    }
    d = decide(results, BackboneScreening())
    assert d["kept"] == ["good", "close"]
    assert d["reasons"]["chance"].startswith("dropped: its sample accuracy's upper bound")
    assert "bad weights" in d["reasons"]["broken"]
    assert decide(dict(reversed(results.items())), BackboneScreening()) == d  # order-free
    capped = decide(results, BackboneScreening(keep=1))
    assert capped["kept"] == ["good"] and "not among the 1 best" in capped["reasons"]["close"]
    by_logme = decide(
        {"a": _result(0.9, -1.0), "b": _result(0.8, 2.0)},
        BackboneScreening(rule="top", signal="logme", keep=1),
    )
    assert by_logme["kept"] == ["b"]
    # a hard task: the best is not far above chance, so the margin alone would keep a worthless one
    hard = {"real": _result(0.37, -0.59, 153), "random": _result(0.25, -0.73, 153)}
    assert decide({"random": hard["random"]}, BackboneScreening())["kept"] == ["random"]
    d = decide(hard, BackboneScreening())
    assert d["kept"] == ["real"] and "not shown better than chance" in d["reasons"]["random"]


def test_space_names_the_two_screenings_apart_and_keeps_the_old_spelling() -> None:
    raw = yaml.safe_load(TINY_SPACE)
    old = SearchSpace.model_validate({**raw, "screening": {"trials": 3, "finalists": 2}})
    assert (
        old.two_stage is not None and old.two_stage.trials == 3 and old.screening == old.two_stage
    )
    assert "two_stage" in old.model_dump() and "screening" not in old.model_dump()
    with pytest.raises(ValueError, match="old name of two_stage"):
        SearchSpace.model_validate({**raw, "screening": {"trials": 3}, "two_stage": {"trials": 3}})
    space = SearchSpace.model_validate(raw)
    assert not space.backbone_screening.active(1) and space.backbone_screening.active(2)
    off = apply_backbone_screening(space, "off", 50)
    assert off.backbone_screening.enabled is False and off.backbone_screening.sample == 50
    with pytest.raises(UsageError, match="must be on, off or auto"):
        apply_backbone_screening(space, "maybe", None)
    with pytest.raises(UsageError, match="sample"):
        apply_backbone_screening(space, None, 3)


def test_the_first_stored_value_holds_for_every_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert claim(url, "s", "k", {"kept": ["a"]}) == {"kept": ["a"]}
    assert claim(url, "s", "k", {"kept": ["b"]}) == {"kept": ["a"]}  # the later one goes on with it
    assert claim(url, "other", "k", 1) == 1 and read_all(url, "s") == {"k": {"kept": ["a"]}}


def test_few_files_are_decoded_by_threads_many_by_processes() -> None:
    from autotl.data.decoding import THREADS_BELOW, default_workers, workers_for

    assert workers_for(398) == 0 and workers_for(THREADS_BELOW) == default_workers()
    assert workers_for(398, asked=2) == 2 and workers_for(10**6, asked=0) == 0


def test_keras_tuner_refuses_backbone_screening_in_one_line(
    image_folder: Path, tiny_space_file: Path, tmp_path: Path
) -> None:
    import autotl

    with pytest.raises(UsageError, match="backbone screening is the Optuna engine's") as caught:
        autotl.search(
            image_folder,
            out=tmp_path / "run",
            space=tiny_space_file,
            engine="keras-tuner",
            backbone_screening="on",
            plugins=[TINY_PLUGIN],
            weights="none",
            report=False,
        )
    assert "\n" not in str(caught.value)


def test_full_caches_are_built_cheapest_first_one_trial_apart_and_within_the_timeout() -> None:
    from autotl.engine.backbone_screen import FullCaches

    built: list[str] = []
    said: list[dict] = []
    estimates = {"slow": 600.0, "fast": 5.0, "medium": 60.0}
    full = FullCaches(
        list(estimates),
        estimates,
        lambda name, _stop: built.append(name),
        said.append,
        deadline=time.monotonic() + 120,
    )
    assert full.pending == ["fast", "medium", "slow"]
    assert full.due(0) and full.next(lambda: False) == "fast" and not full.due(0)
    assert full.due(1) and full.next(lambda: False) == "medium"
    assert full.next(lambda: False) is None  # 10:00 cannot finish in the 2:00 left: not started
    assert built == ["fast", "medium"] and "slow" in full.refused
    warning = [e["warning"] for e in said if "warning" in e]
    assert len(warning) == 1 and "needs about 10:00" in warning[0] and "not started" in warning[0]
    assert any("medium: building its full cache, about 1:00" == e.get("info") for e in said)
    # no sample stage, so no measured rate: the smallest base goes first
    unmeasured = FullCaches(
        ["b", "c", "a"], {}, lambda *_: None, said.append, sizes={"a": 9, "c": 2}
    )
    assert unmeasured.pending == ["b", "c", "a"]


def test_a_stopped_full_cache_build_is_put_back_and_a_broken_one_does_not_stop_the_search() -> None:
    from autotl.engine.backbone_screen import FullCaches
    from autotl.training.cache import BuildStopped

    def build(name: str, stop) -> None:
        if stop():
            raise BuildStopped(name)
        if name == "broken":
            raise RuntimeError("a plugin's own fault")

    full = FullCaches(["a", "broken"], {}, build, lambda _e: None)
    assert full.next(lambda: False) == "a"
    stopping = iter([False, True])  # the loop's check passes; the build's first batch sees Ctrl-C
    assert full.next(lambda: next(stopping)) is None
    assert full.pending == ["broken"] and full.ready == ["a"]  # not built, not lost: next time
    assert full.next(lambda: False) == "broken"  # its first trial fails with the reason


@pytest.mark.slow
def test_workers_racing_on_postgresql_go_on_with_one_decision(postgres_url: str) -> None:
    """Eight threads store eight different decisions at once: every one of them reads back the same."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        got = list(
            pool.map(lambda i: claim(postgres_url, "race", DECISION_KEY, {"kept": [i]}), range(8))
        )
    assert len({json.dumps(g) for g in got}) == 1
    assert read_all(postgres_url, "race") == {DECISION_KEY: got[0]}


# -- inside a search


def _space(**screening) -> SearchSpace:
    raw = yaml.safe_load(TINY_SPACE)
    raw.update(
        backbones=["tiny_blind", "tiny"],
        backbone_screening={"sample": 60, **screening},
        two_stage={"trials": 10},  # phase 1 only: what screening changes is before it
        trials=2,
    )
    return SearchSpace.model_validate(raw)


def _config(out: Path, trials: int = 2, **screening) -> SearchConfig:
    return SearchConfig(
        out=out, space=_space(**screening), trials=trials, weights=WeightsSource("none")
    )


@pytest.fixture(scope="module")
def two_registry():
    from autotl.backbones.registry import get_registry

    return get_registry([TINY_PLUGIN, BLIND], autoload=False)


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 images: a sample of 60 has 15 validation images, enough to tell chance from the tiny CNN."""
    return write_images(tmp_path_factory.mktemp("colours40"), COLOURS, 40)


@pytest.fixture(scope="module")
def colours_data(colours: Path):
    from autotl.data.dataset import load_folder

    return load_folder(colours, val_fraction=0.25, seed=0)


@pytest.mark.slow
def test_screening_drops_the_blind_backbone_the_same_way_for_a_seed_and_resumes_without_redoing_it(
    two_registry, colours_data, tmp_path: Path
) -> None:
    import optuna

    from autotl.api import Run

    events: list[dict] = []
    cfg = _config(tmp_path / "a")
    study = run_search(cfg, two_registry, colours_data, events.append)
    stored = read_all(cfg.storage_url, cfg.study_name)
    decision = stored[DECISION_KEY]
    assert decision["kept"] == ["tiny"] and decision["sample_images"] == 60
    assert decision["reasons"]["tiny_blind"].startswith("dropped")
    assert {t.params["backbone"] for t in study.trials} == {"tiny"}
    assert stored[RESULT_KEY + "tiny_blind"]["accuracy"] < stored[RESULT_KEY + "tiny"]["accuracy"]
    assert stored[RESULT_KEY + "tiny_blind"]["logme"] < stored[RESULT_KEY + "tiny"]["logme"]
    # the best model follows the search: it is the best trial's when the search ends
    assert RunFolder(cfg.out).best_trial_number() == ranked_trials(study)[0].number

    # the same seed in another run folder: the same decision, from the same sample scores
    other = _config(tmp_path / "b", trials=1)
    run_search(other, two_registry, colours_data)
    again = read_all(other.storage_url, other.study_name)
    for key in (DECISION_KEY, RESULT_KEY + "tiny", RESULT_KEY + "tiny_blind"):
        drop = {"images_per_second", "cache_seconds", "seconds", "score_seconds", "estimates"}
        assert {k: v for k, v in again[key].items() if k not in drop} == {
            k: v for k, v in stored[key].items() if k not in drop
        }

    # resumed with a bigger budget: no sample is built or scored again
    events.clear()
    study = run_search(_config(tmp_path / "a", trials=3), two_registry, colours_data, events.append)
    assert not [e for e in events if "sample" in e or "sample:" in str(e.get("status", ""))]
    assert any("decided earlier" in str(e.get("info")) for e in events)
    assert read_all(cfg.storage_url, cfg.study_name) == stored
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 3

    run = Run(tmp_path / "a")
    run.report(evaluate=False)
    summary = json.loads((tmp_path / "a" / "report.json").read_text())["summary"]
    assert summary["skipped_backbones"]["tiny_blind"].startswith("screened out: dropped")
    assert "Backbone screening" in (tmp_path / "a" / "report.md").read_text()
    frame = run.screening()
    assert list(frame["backbone"]) == ["tiny", "tiny_blind"]
    assert list(frame["kept"]) == [True, False]
    assert frame.loc[0, "best_on_all_data"] == pytest.approx(study.best_value)
    assert np.isnan(frame.loc[1, "best_on_all_data"])
    assert frame.loc[1, "accuracy_high"] < frame.loc[0, "accuracy_low"]


@pytest.fixture(scope="module")
def colours_300(tmp_path_factory: pytest.TempPathFactory):
    from autotl.data.dataset import load_folder

    return load_folder(
        write_images(tmp_path_factory.mktemp("colours100"), COLOURS, 100), val_fraction=0.25, seed=0
    )


@pytest.mark.slow
def test_the_pilot_drops_a_worthless_backbone_before_its_sample_is_cached(
    two_registry, colours_300, tmp_path: Path
) -> None:
    """A pilot of 120 images, then a sample of 240: the blind backbone is scored on the pilot only."""
    from autotl.api import Run
    from autotl.engine.backbone_screen import PILOT_DECISION_KEY, PILOT_KEY

    cfg = _config(tmp_path / "run", trials=1, sample=240, pilot=120)
    events: list[dict] = []
    run_search(cfg, two_registry, colours_300, events.append)
    stored = read_all(cfg.storage_url, cfg.study_name)
    cut, decision = stored[PILOT_DECISION_KEY], stored[DECISION_KEY]
    assert cut["kept"] == ["tiny"] and cut["reasons"]["tiny_blind"].startswith(
        "dropped at the pilot"
    )
    assert RESULT_KEY + "tiny_blind" not in stored and PILOT_KEY + "tiny_blind" in stored
    pilot = stored[PILOT_KEY + "tiny"]
    assert pilot["train_images"] + pilot["val_images"] == 120
    assert decision["kept"] == ["tiny"] and decision["sample_images"] == 240
    assert decision["reasons"]["tiny_blind"] == cut["reasons"]["tiny_blind"]
    built = [json.loads(f.read_text()) for f in (cfg.out / "cache").glob("*/meta.json")]
    assert {m["build"]["images"] for m in built if m["backbone"] == "tiny_blind"} == {120}
    assert {m["build"]["images"] for m in built if m["backbone"] == "tiny"} >= {120, 240, 300}
    assert any("after a pilot of 120" in str(e.get("info")) for e in events)
    frame = Run(cfg.out).screening()
    assert list(frame["backbone"]) == ["tiny", "tiny_blind"]
    assert list(frame["sample_images"]) == [240, 120] and list(frame["kept"]) == [True, False]


def test_ctrl_c_during_a_full_cache_leaves_the_best_model_so_far(
    two_registry, colours_data, tmp_path: Path
) -> None:
    """Both backbones' full caches built lazily (screening off: both go on), the second after trial 0:
    Ctrl-C twice during it (KeyboardInterrupt) leaves trial 0's model as the best model."""
    finished: list[int] = []

    def on_event(e: dict) -> None:
        if "finished" in e:
            finished.append(e["finished"])
        if finished and "full cache:" in str(e.get("status", "")):
            raise KeyboardInterrupt

    cfg = _config(tmp_path / "run", trials=4, enabled=False)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, two_registry, colours_data, on_event)
    run = RunFolder(cfg.out)
    assert finished == [0] and run.best_trial_number() == 0 and run.best_model().is_file()
    cache = cfg.out / "cache"
    assert not list(cache.glob("*.tmp*"))  # the interrupted build left nothing half-written


def test_ctrl_c_once_during_a_full_cache_stops_the_build_at_once_and_a_resume_builds_it(
    two_registry, colours_data, tmp_path: Path
) -> None:
    """Ctrl-C once (``should_stop``) at the first batch of the second full cache: the build stops there,
    keeps nothing, the search returns with trial 0's best model; rerunning builds it and goes on."""
    finished: list[int] = []
    builds: list[str] = []
    pressed: list[bool] = []

    def on_event(e: dict) -> None:
        if "finished" in e:
            finished.append(e["finished"])
        status = str(e.get("status", ""))
        if "full cache:" in status:
            builds.append(status)
            if finished:  # the second build: its first batch is done
                pressed.append(True)

    cfg = _config(tmp_path / "run", trials=4, enabled=False)
    cfg.space = cfg.space.model_copy(update={"batch_size": 8})  # several batches per build
    run_search(cfg, two_registry, colours_data, on_event, should_stop=lambda: bool(pressed))
    run = RunFolder(cfg.out)
    assert finished == [0] and run.best_trial_number() == 0 and run.best_model().is_file()
    cache = cfg.out / "cache"
    assert not list(cache.glob("*.tmp*"))
    cached = [json.loads(f.read_text())["backbone"] for f in cache.glob("*/meta.json")]
    assert len(set(cached)) == 1  # the first backbone's entries only
    total = len(colours_data.train) + len(colours_data.val)
    second = [b for b in builds if b.startswith(builds[-1].split(" |")[0])]
    assert second[-1].split("features ")[1].startswith("8/")  # stopped after its first batch

    pressed.clear()
    finished.clear()
    study = run_search(cfg, two_registry, colours_data, on_event)
    assert finished == [1, 2, 3] and len(study.trials) == 4
    cached = [json.loads(f.read_text())["backbone"] for f in cache.glob("*/meta.json")]
    assert set(cached) == {"tiny", "tiny_blind"}
    assert total > 8


_KILLED = """
import sys, time
sys.path.insert(0, sys.argv[3])
from autotl.backbones.registry import get_registry
from autotl.backbones.weights import WeightsSource
from autotl.data.dataset import load_folder
from autotl.engine.optuna_engine import SearchConfig, run_search
from autotl.engine.space import SearchSpace
import json

def on_event(e):
    if "sample" in e:  # one backbone's sample result is stored: stall here, to be killed
        print("STORED", flush=True)
        time.sleep(120)

space = SearchSpace.model_validate(json.loads(sys.argv[2]))
cfg = SearchConfig(out=sys.argv[1], space=space, trials=1, weights=WeightsSource("none"))
run_search(cfg, get_registry(["autotl_tiny", "autotl_tiny_blind"], autoload=False),
           load_folder(sys.argv[4], val_fraction=0.25, seed=0), on_event)
"""


@pytest.mark.slow
def test_a_worker_killed_during_the_sample_stage_loses_nothing(
    two_registry, colours_data, colours: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    space = _space()
    plugins = str(Path(__file__).parent / "plugins")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED,
            str(out),
            json.dumps(space.model_dump()),
            plugins,
            str(colours),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": plugins},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "STORED"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    url = RunFolder(out).storage_url(None)
    first = read_all(url, "autotl")
    assert len(first) == 1 and next(iter(first)).startswith(RESULT_KEY)  # one result, no decision
    cfg = SearchConfig(out=out, space=space, trials=1, weights=WeightsSource("none"))
    events: list[dict] = []
    started = time.monotonic()
    run_search(cfg, two_registry, colours_data, events.append)
    assert time.monotonic() - started < 300
    after = read_all(url, "autotl")
    assert {k: after[k] for k in first} == first  # the killed worker's result was kept, not redone
    scored = [e["sample"] for e in events if "sample" in e]
    assert len(scored) == 1 and RESULT_KEY + scored[0] not in first
    assert after[DECISION_KEY]["kept"] == ["tiny"]
