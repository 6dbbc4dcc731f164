"""Every way a plugin, a trial or an input can fail: one clear line, and the search goes on or stops (issue #12).

The faulty plugins are real modules in ``tests/plugins/faulty/``, each wrong in
one way.  Every kind of failure goes through the real CLI in a subprocess at
least once (exit code, one line on stderr, no traceback); the rest run the
same code in this process, where TensorFlow is already loaded.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import TESTS, TINY_SPACE, assert_one_line_error, run_cli

import autotl
from autotl.errors import SearchStopped, UsageError

TRACED = "faulty.traced"  # passes every check, fails in every trial (see its docstring)


def space_file(
    folder: Path, backbones: list[str], trials: int = 2, extra: str = "", screening: bool = False
) -> Path:
    """The tiny space on ``backbones``; backbone screening off unless asked for (these tests are about
    what happens in trials, and screening would drop a faulty backbone before its first trial)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(
        TINY_SPACE.replace("backbones: [tiny]", f"backbones: [{', '.join(backbones)}]").replace(
            "trials: 2", f"trials: {trials}"
        )
        + f"backbone_screening: {{enabled: {str(screening).lower()}, sample: 20}}\n"
        + extra
    )
    return path


def api_search(tmp_path: Path, data: Path, names: list[str], plugins: list[str], **kwargs):
    """``autotl.search`` with the tiny space on backbones ``names``; returns (run or exception, warnings)."""
    warnings: list[str] = []
    kwargs.setdefault("trials", 2)
    space = space_file(
        tmp_path, names, kwargs.pop("trials"), screening=kwargs.pop("screening", False)
    )
    try:
        run = autotl.search(
            data,
            out=tmp_path / "run",
            space=str(space),
            weights=kwargs.pop("weights", "none"),
            plugins=plugins,
            report=False,
            on_event=lambda e: warnings.append(e["warning"]) if "warning" in e else None,
            **kwargs,
        )
    except autotl.AutotlError as exc:
        return exc, warnings
    return run, warnings


def study_trials(run_dir: Path) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(storage=f"sqlite:///{run_dir / 'study.db'}", study_name="autotl")
    return study.get_trials(deepcopy=False)


# --- 1. plugin loading --------------------------------------------------------------------------

PLUGIN_FAULTS = [
    ("import_raises", "raised KeyError: 'batch' when imported"),
    ("import_dependency", "needs 'autotl_no_such_dependency', which is not installed"),
    ("import_exits", "raised SystemExit: 3 when imported"),
    ("signature", "does not match its specification in autotl/hookspec.py"),
    ("hook_name", "autotl_backbone() is marked @hookimpl but is not an autotl hook"),
    ("hook_raises", "autotl_backbones() raised KeyError: 'large'"),
    ("returns_none", "must return a list of BackboneSpec objects, got None"),
    ("returns_spec", "got a BackboneSpec"),
    ("returns_dict", "got a dict"),
    ("returns_generator", "got a generator"),
    ("returns_names", "one item is a str"),
    ("bad_field", "weights_file: must be a file name (no folder) ending in .weights.h5"),
]


@pytest.mark.parametrize("module, fragment", PLUGIN_FAULTS, ids=[m for m, _ in PLUGIN_FAULTS])
def test_a_faulty_plugin_module_is_one_line_naming_it(module: str, fragment: str) -> None:
    assert_one_line_error(
        run_cli("plugins", "--plugin", f"faulty.{module}"), f"faulty.{module}", fragment
    )


def test_a_faulty_plugin_stops_a_search_before_anything_runs(
    image_folder: Path, tmp_path: Path
) -> None:
    proc = run_cli(
        "search",
        str(image_folder),
        "--out",
        str(tmp_path / "run"),
        "--plugin",
        "faulty.returns_dict",
    )
    assert_one_line_error(proc, "plugin 'faulty.returns_dict'", "got a dict")
    assert not (tmp_path / "run").exists()


def test_a_plugin_with_a_syntax_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "typo_plugin.py").write_text("def autotl_backbones(:\n    return []\n")
    proc = run_cli(
        "plugins", "--plugin", "typo_plugin", env={"PYTHONPATH": f"{tmp_path}:{TESTS / 'plugins'}"}
    )
    assert_one_line_error(proc, "plugin module 'typo_plugin' raised SyntaxError")


def test_a_duplicate_name_names_both_plugins() -> None:
    proc = run_cli("plugins", "--plugin", "autotl_tiny", "--plugin", "faulty.duplicate")
    assert_one_line_error(proc, "'tiny' is registered twice", "'autotl_tiny'", "'faulty.duplicate'")


def _site(tmp_path: Path, distributions: dict[str, str]) -> Path:
    """A folder of installed distributions, each with one ``autotl`` entry point ``name = module``."""
    site = tmp_path / "site"
    for dist, module in distributions.items():
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[autotl]\n{dist.replace('-', '_')} = {module}\n")
    return site


def test_a_broken_installed_plugin_is_a_warning_and_everything_else_works(
    tmp_path: Path, image_folder: Path
) -> None:
    site = _site(
        tmp_path,
        {
            "raises-at-import": "faulty.import_raises",
            "module-removed": "autotl_module_that_was_uninstalled",
            "hook-returns-none": "faulty.returns_none",
            "good-tiny": "autotl_tiny",
        },
    )
    env = {"AUTOTL_DISABLE_PLUGIN_AUTOLOAD": "", "PYTHONPATH": f"{site}:{TESTS / 'plugins'}"}
    listed = run_cli("plugins", "--weights", "none", env=env)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "mobilenet_v2-0.35" in listed.stdout and "good_tiny" in listed.stdout
    warnings = [line for line in listed.stderr.splitlines() if line.strip()]
    assert len(warnings) == 3 and all(
        w.startswith("warning: plugin distribution ") for w in warnings
    )
    for dist, fragment in (
        ("raises-at-import 0.1", "KeyError"),
        ("module-removed 0.1", "ModuleNotFoundError"),
        ("hook-returns-none 0.1", "got None"),
    ):
        assert any(dist in w and fragment in w for w in warnings), (dist, warnings)
    asked = run_cli(
        "search", str(image_folder), "--backbone", "faulty_none", "--weights", "none", env=env
    )
    assert_one_line_error(
        asked, "unknown backbone 'faulty_none'", "hook-returns-none 0.1", "got None"
    )


def test_a_search_goes_on_beside_a_broken_installed_plugin(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    site = _site(tmp_path, {"raises-at-import": "faulty.import_raises"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("AUTOTL_DISABLE_PLUGIN_AUTOLOAD")
    importlib.invalidate_caches()
    run, warnings = api_search(tmp_path, image_folder, ["tiny"], ["autotl_tiny"], trials=1)
    assert isinstance(run, autotl.Run) and len(run.study.trials) == 1
    assert (
        len(warnings) == 1
        and "plugin distribution raises-at-import 0.1 is not loaded" in warnings[0]
    )


# --- 2. checked before use ----------------------------------------------------------------------

PRECHECK_FAULTS = [
    ("top", "faulty_top", "build: the base must output one feature map"),
    ("blocks", "faulty_blocks", "block_pattern: '^block_out$' matches no layer"),
    ("preprocessing", "faulty_preprocessing", "differs from preprocess_input"),
    ("build_raises", "faulty_build_raises", "RuntimeError: cannot build at (32, 32, 3)"),
]


@pytest.mark.parametrize(
    "module, name, fragment", PRECHECK_FAULTS, ids=[m for m, _, _ in PRECHECK_FAULTS]
)
def test_a_backbone_that_fails_its_checks_is_refused_at_start_up(
    tmp_path: Path, image_folder: Path, module: str, name: str, fragment: str
) -> None:
    result, warnings = api_search(tmp_path, image_folder, [name], [f"faulty.{module}"])
    assert isinstance(result, UsageError) and not warnings
    assert f"backbone {name!r} failed its checks before its first trial" in str(result)
    assert fragment in str(result) and "\n" not in str(result)
    checks = json.loads((tmp_path / "run" / "checks.json").read_text())
    assert checks[name]["passed"] is False and fragment in checks[name]["reason"]
    assert study_trials(tmp_path / "run") == []  # no trial was spent on it


@pytest.mark.slow
def test_a_backbone_with_a_classification_top_is_one_line_through_the_cli(
    tmp_path: Path, image_folder: Path
) -> None:
    space = space_file(tmp_path, ["faulty_top"])
    proc = run_cli(
        "search", str(image_folder), "--space", str(space), "--out", str(tmp_path / "run"),
        "--plugin", "faulty.top", "--weights", "none",
    )  # fmt: skip
    assert_one_line_error(proc, "'faulty_top' failed its checks", "include_top=False")


@pytest.mark.slow
def test_a_failing_backbone_among_several_is_skipped_with_a_warning_and_the_report_says_why(
    tmp_path: Path, image_folder: Path
) -> None:
    run, warnings = api_search(
        tmp_path, image_folder, ["tiny", "faulty_top"], ["autotl_tiny", "faulty.top"], trials=1
    )
    assert isinstance(run, autotl.Run), run
    assert warnings == [
        "skipping backbone 'faulty_top': failed its checks before its first trial: build: the base must "
        "output one feature map (batch, h, w, channels>0), got (None, 10): build with include_top=False "
        "and no pooling"
    ]
    assert {t.params["backbone"] for t in run.study.trials} == {"tiny"}
    checks = json.loads((tmp_path / "run" / "checks.json").read_text())
    assert checks["tiny"]["passed"] and checks["faulty_top"]["passed"] is False
    skipped = json.loads(run.report(evaluate=False)["json"].read_text())["summary"][
        "skipped_backbones"
    ]
    assert list(skipped) == ["faulty_top"] and "include_top=False" in skipped["faulty_top"]
    assert "skipped backbones" in run.report_paths["md"].read_text()


@pytest.mark.slow
def test_checks_run_once_per_run_folder(tmp_path: Path, image_folder: Path) -> None:
    api_search(tmp_path, image_folder, ["tiny"], ["autotl_tiny"], trials=1)
    first = json.loads((tmp_path / "run" / "checks.json").read_text())["tiny"]
    run, _ = api_search(tmp_path, image_folder, ["tiny"], ["autotl_tiny"], trials=2)
    again = json.loads((tmp_path / "run" / "checks.json").read_text())["tiny"]
    assert len(run.study.trials) == 2 and again == first  # resumed: the recorded pass holds


def test_a_named_backbone_that_fails_its_checks_is_refused_even_with_others(
    tmp_path: Path, image_folder: Path
) -> None:
    result, _ = api_search(
        tmp_path, image_folder, ["tiny", "faulty_blocks"], ["autotl_tiny", "faulty.blocks"],
        backbones=["tiny", "faulty_blocks"],
    )  # fmt: skip
    assert isinstance(result, UsageError) and "'faulty_blocks' failed its checks" in str(result)


def _tiny_weights(folder: Path) -> Path:
    """A real Keras 3 weight file of the tiny backbone, as a plugin author saves one."""
    from autotl_tiny import build_tiny

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.weights.h5"
    build_tiny((32, 32, 3), None).save_weights(path)
    return path


@pytest.mark.slow
def test_weight_files_are_checked_for_format_and_hash_before_the_first_trial(
    tmp_path: Path, image_folder: Path
) -> None:
    import hashlib

    good = _tiny_weights(tmp_path / "good")
    run, _ = api_search(tmp_path / "a", image_folder, ["tiny"], ["autotl_tiny"], trials=1, weights=None, weights_dir=good.parent)  # fmt: skip
    lines = json.loads((tmp_path / "a" / "run" / "checks.json").read_text())["tiny"]["lines"]
    assert isinstance(run, autotl.Run) and any(
        hashlib.sha256(good.read_bytes()).hexdigest()[:12] in line for line in lines
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tiny.weights.h5").write_bytes(b"not HDF5 at all")
    result, _ = api_search(tmp_path / "b", image_folder, ["tiny"], ["autotl_tiny"], weights=None, weights_dir=bad)  # fmt: skip
    assert isinstance(result, UsageError) and "is not an HDF5 file" in str(result)
    (good.parent / "SHA256SUMS").write_text(f"{'0' * 64}  tiny.weights.h5\n")
    result, _ = api_search(tmp_path / "c", image_folder, ["tiny"], ["autotl_tiny"], weights=None, weights_dir=good.parent)  # fmt: skip
    assert isinstance(result, UsageError) and "SHA256SUMS expects 0000" in str(result)


# --- 3. trial failures ----------------------------------------------------------------------------


def test_an_always_failing_backbone_stops_the_search_instead_of_looping(
    tmp_path: Path, image_folder: Path
) -> None:
    result, warnings = api_search(tmp_path, image_folder, ["faulty_traced"], [TRACED], trials=2)
    assert isinstance(result, SearchStopped), result
    assert str(result).startswith(
        "search stopped: no backbone left to search: faulty_traced failed 3 times in a row (last: "
        "NotImplementedError: Cannot convert a symbolic tf.Tensor"
    )
    assert warnings == []  # the stop says it; no warning before it
    trials = study_trials(tmp_path / "run")
    assert [t.state.name for t in trials] == ["FAIL"] * 3
    assert all(t.user_attrs["fail_kind"] == "trial" for t in trials)
    assert all("NotImplementedError" in t.user_attrs["fail_reason"] for t in trials)
    again, _ = api_search(tmp_path, image_folder, ["faulty_traced"], [TRACED], trials=2)
    assert isinstance(again, SearchStopped)  # a rerun gives it a fresh chance, just as bounded
    assert len(study_trials(tmp_path / "run")) == 6


@pytest.mark.slow
def test_an_always_failing_backbone_ends_through_the_cli_with_one_line(
    tmp_path: Path, image_folder: Path
) -> None:
    space = space_file(tmp_path, ["faulty_traced"])
    proc = run_cli(
        "search", str(image_folder), "--space", str(space), "--out", str(tmp_path / "run"),
        "--plugin", TRACED, "--weights", "none", "--trials", "2",
        timeout=300,  # the proof: before this change, it retried for ever
    )  # fmt: skip
    assert_one_line_error(
        proc, "search stopped: no backbone left to search", "failed 3 times in a row"
    )
    shown = [line for line in proc.stdout.splitlines() if ": failed: " in line]
    assert [line.split(":")[0] for line in shown] == ["trial 0", "trial 1", "trial 2"]
    assert all(": failed: NotImplementedError: Cannot convert" in line for line in shown)
    assert len(study_trials(tmp_path / "run")) == 3
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [r["state"] for r in report["leaderboard"]] == ["failed"] * 3
    assert all("NotImplementedError" in r["note"] for r in report["leaderboard"])
    assert "faulty_traced" in report["summary"]["skipped_backbones"]


def test_max_failures_stops_a_search_whatever_the_backbones(
    tmp_path: Path, image_folder: Path
) -> None:
    result, _ = api_search(
        tmp_path,
        image_folder,
        ["faulty_traced", "faulty_traced_b"],
        [TRACED],
        max_failures=2,
    )
    assert isinstance(result, SearchStopped)
    assert "2 trials in a row failed (--max-failures 2); last: trial 1: NotImplementedError" in str(
        result
    )
    assert [t.state.name for t in study_trials(tmp_path / "run")] == ["FAIL", "FAIL"]


def test_backbone_screening_drops_a_faulty_backbone_before_its_first_trial(
    tmp_path: Path, image_folder: Path
) -> None:
    run, _ = api_search(
        tmp_path, image_folder, ["tiny", "faulty_traced"], ["autotl_tiny", TRACED], screening=True
    )
    assert {t.params["backbone"] for t in run.study.trials} == {"tiny"}
    frame = run.screening().set_index("backbone")
    assert not frame.loc["faulty_traced", "kept"]
    assert "its sample failed (NotImplementedError" in frame.loc["faulty_traced", "reason"]


def test_max_failures_below_one_is_one_line(image_folder: Path) -> None:
    proc = run_cli("search", str(image_folder), "--max-failures", "0", "--weights", "none")
    assert_one_line_error(proc, "max_failures must be at least 1, got 0")


@pytest.mark.slow
def test_a_dropped_backbone_is_dropped_once_and_never_tried_again(
    tmp_path: Path, tiny_dataset
) -> None:
    """Three queued trials of a backbone fail: it is dropped with one warning; the two queued after them
    are refused at once (not counted as failures), and the sampler only proposes the live backbone."""
    import optuna

    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import WeightsSource
    from autotl.engine.optuna_engine import SearchConfig, run_search
    from autotl.engine.space import load_space

    space, _ = load_space(space_file(tmp_path, ["tiny", "faulty_traced"], trials=2))
    cfg = SearchConfig(tmp_path / "run", space, 2, WeightsSource("none"))
    cfg.run.prepare()
    queued = optuna.create_study(storage=cfg.storage_url, study_name="autotl", direction="maximize")
    for _ in range(5):
        queued.enqueue_trial({"backbone": "faulty_traced"})
    events: list[dict] = []
    registry = get_registry(["autotl_tiny", TRACED], autoload=False)
    study = run_search(cfg, registry, tiny_dataset, events.append)
    trials = study.get_trials(deepcopy=False)
    kinds = [(t.params["backbone"], t.state.name, t.user_attrs.get("fail_kind")) for t in trials]
    assert (
        kinds[:5]
        == [("faulty_traced", "FAIL", "trial")] * 3 + [("faulty_traced", "FAIL", "skipped")] * 2
    )
    assert kinds[5:] == [("tiny", "COMPLETE", None)] * 2
    assert (
        trials[4]
        .user_attrs["fail_reason"]
        .startswith(
            "skipped: backbone faulty_traced failed 3 times in a row (last: NotImplementedError"
        )
    )
    dropped = [e["warning"] for e in events if "warning" in e]
    assert len(dropped) == 1 and dropped[0].startswith(
        "backbone faulty_traced is dropped for the rest"
    )


def test_a_diverging_head_fails_its_trials_with_the_reason(
    tmp_path: Path, image_folder: Path
) -> None:
    """Non-finite loss (a learning rate no head survives) fails each trial, and the search stops."""
    space = space_file(tmp_path, ["tiny"])
    space.write_text(space.read_text().replace("learning_rate: 1.0e-2", "learning_rate: 1.0e+30"))
    with pytest.raises(
        SearchStopped, match=r"tiny failed 3 times in a row \(last: training diverged"
    ):
        autotl.search(
            image_folder, out=tmp_path / "run", space=str(tmp_path / "space.yaml"), weights="none",
            plugins=["autotl_tiny"], report=False,
        )  # fmt: skip
    assert all("diverged" in t.user_attrs["fail_reason"] for t in study_trials(tmp_path / "run"))


def test_progress_survives_events_of_a_trial_that_failed_before_its_first_epoch() -> None:
    import io

    from rich.console import Console

    from autotl.ui import SearchProgress

    out = io.StringIO()
    with SearchProgress(Console(file=out, width=200), 3) as progress:
        for event in (
            {"start": True, "total": 3},
            {"trial": 0, "backbone": "faulty_traced", "failed": "NotImplementedError: boom"},
            {"trial": 1},
            {"trial": 1, "phase": 1},
            {"finished": 0, "state": "FAIL", "reason": "NotImplementedError: boom"},
            {"finished": 1, "state": "FAIL"},
            {"finished": 2, "state": "COMPLETE", "value": 0.5},
        ):
            progress.event(event)
    text = out.getvalue()
    assert "trial 0: failed: NotImplementedError: boom" in text
    assert (
        "trial 1: failed: no reason recorded" in text
        and "trial 2: complete, val accuracy 0.5000" in text
    )


# --- 4. the contract made explicit ----------------------------------------------------------------


def test_a_backbone_without_downloadable_weights_says_so(image_folder: Path) -> None:
    proc = run_cli(
        "search",
        str(image_folder),
        "--plugin",
        "autotl_tiny",
        "--backbone",
        "tiny",
        "--weights",
        "imagenet",
    )
    assert_one_line_error(
        proc, "backbone 'tiny' has no ImageNet weights to download", "tiny.weights.h5"
    )
    listed = run_cli("plugins", "--plugin", "autotl_tiny", "--weights", "imagenet")
    row = next(line for line in listed.stdout.splitlines() if " tiny " in line)
    assert "no download" in row and "downloads" in next(
        line for line in listed.stdout.splitlines() if "mobilenet_v2-0.35" in line
    )


def test_a_download_failure_is_known_by_its_type_not_its_words() -> None:
    import urllib.error
    from dataclasses import replace

    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import ResolvedWeights
    from autotl.errors import TrialFailed
    from autotl.training.model import build_base

    def offline(input_shape, weights):
        try:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        except urllib.error.URLError as exc:  # what keras.utils.get_file does
            raise Exception(f"URL fetch failure on https://example/x.h5: None -- {exc.reason}")  # noqa: B904

    def words_only(input_shape, weights):
        raise RuntimeError(
            "download of the URL failed: Connection refused"
        )  # a bug, not the network

    spec = get_registry(["autotl_tiny"], autoload=False).backbone("tiny")
    imagenet = ResolvedWeights("imagenet", None, "imagenet (Keras download)")
    with pytest.raises(
        UsageError, match=r"cannot download ImageNet weights for 'tiny'.*--weights-dir"
    ):
        build_base(replace(spec, build=offline), imagenet)
    with pytest.raises(
        TrialFailed, match=r"building 'tiny' at 32x32 failed: RuntimeError: download"
    ):
        build_base(replace(spec, build=words_only), imagenet)


@pytest.mark.slow
def test_plugins_check_loads_and_hashes_the_weight_file_and_documents_its_exit_codes(
    tmp_path: Path,
) -> None:
    good = _tiny_weights(tmp_path / "w")
    proc = run_cli("plugins", "check", "autotl_tiny", "--weights-dir", str(good.parent))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tiny: ok: weights file" in proc.stdout and "1 passed, 0 failed" in proc.stdout
    (good.parent / "SHA256SUMS").write_text(f"{'0' * 64}  tiny.weights.h5\n")
    proc = run_cli("plugins", "check", "autotl_tiny", "--weights-dir", str(good.parent))
    assert (
        proc.returncode == 1
        and "tiny: FAILED: weights file" in proc.stdout
        and "SHA-256" in proc.stdout
    )
    assert_one_line_error(run_cli("plugins", "check", "no_such_backbone_or_module"), "is neither")
    helped = run_cli("plugins", "--help")
    assert "0 every check passed, 1 a check failed, 2 usage error" in " ".join(
        helped.stdout.split()
    )


# --- 5. every other command's bad input -----------------------------------------------------------


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders that are not runs, or runs whose study.db is damaged, empty or another program's
    (each test checks they are left as they were)."""
    import optuna

    tmp_path = tmp_path_factory.mktemp("bad_runs")

    runs = {
        name: tmp_path / name
        for name in ("empty_folder", "corrupt", "foreign", "empty_db", "other_study")
    }
    for folder in runs.values():
        folder.mkdir()
    (runs["corrupt"] / "study.db").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    with sqlite3.connect(runs["foreign"] / "study.db") as con:
        con.execute("CREATE TABLE notes (id INTEGER, text TEXT)")
    (runs["empty_db"] / "study.db").write_bytes(b"")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(
        storage=f"sqlite:///{runs['other_study'] / 'study.db'}", study_name="their-study"
    )
    runs["a_file"] = tmp_path / "notes.txt"
    runs["a_file"].write_text("not a run folder")
    return runs


RUN_FAULTS = [
    ("empty_folder", "no study in"),
    ("a_file", "is a file, not a folder"),
    ("corrupt", "is damaged or not a SQLite database"),
    ("foreign", "is another program's database (tables notes), not an Optuna study"),
    ("empty_db", "is an empty database"),
    ("other_study", "no study 'autotl' in sqlite:///"),
]


@pytest.mark.parametrize("command", ["report", "export"])
@pytest.mark.parametrize("case, fragment", RUN_FAULTS, ids=[c for c, _ in RUN_FAULTS])
def test_report_and_export_on_what_is_not_a_run(
    bad_runs, command: str, case: str, fragment: str
) -> None:
    proc = run_cli(command, str(bad_runs[case]))
    assert_one_line_error(proc, fragment)
    if case == "foreign":  # nothing was written into the other program's database
        with sqlite3.connect(bad_runs["foreign"] / "study.db") as con:
            assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["notes"]
    if case == "empty_db":
        assert (bad_runs["empty_db"] / "study.db").stat().st_size == 0
    if case == "other_study":
        assert "'their-study'" in proc.stderr


def test_lineage_of_what_is_not_a_recorded_model(bad_runs, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("lineage", str(tmp_path)), "is a folder; pass a model file")
    assert_one_line_error(run_cli("lineage", str(tmp_path / "nope.keras")), "does not exist")
    for case, fragment in (
        ("corrupt", "is damaged or not a SQLite database"),
        ("foreign", "is another program's database"),
        ("other_study", "no lineage recorded for"),
    ):
        model = bad_runs[case] / "model.keras"
        model.write_bytes(b"PK\x03\x04 not really a model")
        assert_one_line_error(run_cli("lineage", str(model)), fragment)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier saved as autotl saves one: model.keras with classes.json beside it."""
    from autotl.backbones.registry import get_registry
    from autotl.training.model import assemble, build_head

    folder = tmp_path_factory.mktemp("model")
    spec = get_registry(["autotl_tiny"], autoload=False).backbone("tiny")
    model = assemble(spec, spec.build((32, 32, 3), None), build_head(2, 8, 0.0))
    model.save(folder / "model.keras")
    (folder / "classes.json").write_text('["red", "blue"]')
    return folder / "model.keras"


def _bad_images(folder: Path) -> dict[str, Path]:
    import os

    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "gone.jpg").symlink_to(folder / "deleted.jpg")
    bad = {
        "a folder": folder,
        "not an image": folder / "notes.txt",
        "zero bytes": folder / "empty.png",
        "missing (broken link?)": folder / "gone.jpg",
        "no such file": folder / "never.png",
    }
    if os.geteuid() != 0:  # root reads any file, so only others can have an unreadable one
        (folder / "secret.png").write_bytes(b"\x89PNG")
        (folder / "secret.png").chmod(0)
        bad["cannot read: Permission denied"] = folder / "secret.png"
    return bad


def test_predict_says_one_line_per_bad_image_and_still_classifies_the_rest(
    tiny_model: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from autotl.cli import main

    good = next((image_folder / "red").iterdir())
    bad = _bad_images(tmp_path / "imgs")
    code = main(["predict", str(tiny_model), str(good), *map(str, bad.values())])
    out, err = capsys.readouterr()
    assert code == 2 and out.count("\n") == 1 and out.startswith(f"{good}\t")
    lines = err.strip().splitlines()
    assert len(lines) == len(bad) and all(line.startswith("autotl: error: ") for line in lines)
    for (reason, path), line in zip(bad.items(), lines):
        assert line.startswith(f"autotl: error: {path}: ") and reason.split()[0] in line, line
    assert main(["predict", str(tmp_path / "imgs"), str(good)]) == 2
    assert "holds no model" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_on_a_folder_through_the_cli_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    assert_one_line_error(
        run_cli("predict", str(tiny_model), str(tmp_path)), "is a folder, not an image file"
    )
    (tmp_path / "notes.txt").write_text("not an image")
    assert_one_line_error(
        run_cli("predict", str(tiny_model), str(tmp_path / "notes.txt")), "not an image"
    )


@pytest.mark.slow
def test_the_keras_tuner_engine_fails_trials_with_their_reason_and_stops_in_one_line(
    tmp_path: Path, image_folder: Path
) -> None:
    space = space_file(tmp_path, ["tiny", "faulty_top", "faulty_traced"], trials=6)
    proc = run_cli(
        "search", str(image_folder), "--space", str(space), "--out", str(tmp_path / "run"),
        "--plugin", "autotl_tiny", "--plugin", "faulty.top", "--plugin", TRACED, "--weights", "none",
        "--backbone", "faulty_traced", "--engine", "keras-tuner", "--tuner", "random", timeout=300,
    )  # fmt: skip
    assert_one_line_error(
        proc, "keras-tuner stopped the search", "NotImplementedError: Cannot convert"
    )


# --- the failure policy itself (autotl.engine.failures), on plain records --------------------------------


class _T:
    """The fields of an Optuna FrozenTrial that the failure policy reads."""

    def __init__(self, number: int, state: str, backbone: str = "a", kind=None, session="s"):
        from types import SimpleNamespace

        self.number, self.state, self.params = (
            number,
            SimpleNamespace(name=state),
            {"backbone": backbone},
        )
        self.user_attrs = {"session": session, "fail_reason": f"reason {number}"}
        if kind:
            self.user_attrs["fail_kind"] = kind


def test_only_failures_of_the_trial_itself_count_in_a_row() -> None:
    from autotl.engine.failures import dropped_backbones, stop_reason

    trials = [
        _T(0, "FAIL", kind="trial"),
        _T(1, "FAIL", kind="skipped"),  # refused before training: not the backbone's failure
        _T(2, "FAIL"),  # a killed worker's trial
        _T(3, "FAIL", kind="surplus"),
        _T(4, "FAIL", kind="trial"),
        _T(5, "RUNNING"),
    ]
    assert dropped_backbones(trials, "s") == {}
    trials.append(_T(6, "FAIL", kind="trial"))
    assert dropped_backbones(trials, "s") == {"a": "failed 3 times in a row (last: reason 6)"}
    assert stop_reason(trials, "s", ["b"], {}, max_failures=3) == (
        "3 trials in a row failed (--max-failures 3); last: trial 6: reason 6"
    )
    trials.append(_T(7, "PRUNED"))  # a pruned trial ran: the run of failures ends
    assert dropped_backbones(trials, "s") == {} and stop_reason(trials, "s", ["a"], {}, 3) is None
    assert stop_reason(trials, "s", [], {"a": "failed its checks"}) == (
        "no backbone left to search: a failed its checks"
    )


def test_every_worker_reaches_the_same_verdict_and_a_new_session_starts_afresh() -> None:
    import random

    from autotl.engine.failures import dropped_backbones, latest_session

    trials = [  # two workers, interleaved: b fails three times in a row, a succeeds in between
        _T(0, "FAIL", "b", "trial"),
        _T(1, "COMPLETE", "a"),
        _T(2, "FAIL", "b", "trial"),
        _T(3, "FAIL", "a", "trial"),
        _T(4, "FAIL", "b", "trial"),
        _T(5, "FAIL", "b", "trial", session="later"),
    ]
    for seed in range(5):  # whatever order storage returns them in
        shuffled = random.Random(seed).sample(trials, len(trials))
        assert list(dropped_backbones(shuffled, "s")) == ["b"]
    assert dropped_backbones(trials, "later") == {} and latest_session(trials) == "later"


SAMPLERS = {  # Optuna's own, started early so their model (or relative sampling) does the proposing
    "tpe": lambda o: o.samplers.TPESampler(seed=0, n_startup_trials=4),
    "random": lambda o: o.samplers.RandomSampler(seed=0),
    "nsga2": lambda o: o.samplers.NSGAIISampler(seed=0, population_size=4),
    "cmaes": lambda o: o.samplers.CmaEsSampler(
        seed=0, n_startup_trials=4, warn_independent_sampling=False
    ),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_the_sampler_never_proposes_a_backbone_that_is_gone(sampler: str) -> None:
    import optuna

    from autotl.engine.failures import LiveSampler, SearchBackbones

    backbones = SearchBackbones(
        ["a", "b", "c"], {"b": "failed its checks"}, dropped={"c": "failed 3 times"}
    )
    wrapped = LiveSampler(SAMPLERS[sampler](optuna), backbones, 0)
    study = optuna.create_study(direction="maximize", sampler=wrapped)
    scores = {"a": 0.1, "b": 1.0, "c": 1.0}  # the gone ones would look best: the sampler wants them
    study.optimize(
        lambda t: (
            scores[t.suggest_categorical("backbone", ["a", "b", "c"])] + t.suggest_float("x", 0, 1)
        ),
        n_trials=24,
    )
    assert {t.params["backbone"] for t in study.trials} == {"a"}


@pytest.mark.slow
def test_a_resumed_study_refuses_a_space_optuna_cannot_mix_and_keeps_its_backbones(
    tmp_path: Path, image_folder: Path
) -> None:
    run, _ = api_search(tmp_path, image_folder, ["tiny"], ["autotl_tiny"], trials=1)
    assert isinstance(run, autotl.Run)
    space = space_file(tmp_path, ["tiny"], trials=2)
    space.write_text(space.read_text().replace("width: [8, 16]", "width: [8, 32]"))
    with pytest.raises(
        UsageError, match=r"searched head_width over \[8, 16\], and this space asks for \[8, 32\]"
    ):
        autotl.search(image_folder, out=tmp_path / "run", space=str(space), weights="none", plugins=["autotl_tiny"], report=False)  # fmt: skip
    run, warnings = api_search(
        tmp_path, image_folder, ["tiny", "faulty_top"], ["autotl_tiny", "faulty.top"], trials=2
    )
    assert isinstance(run, autotl.Run) and len(run.study.trials) == 2
    assert warnings == [
        f"skipping backbone 'faulty_top': the study in {tmp_path / 'run'} searches ['tiny'] (pass another --out to search it)"
    ]
