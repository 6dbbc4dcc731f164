"""The command line as a user meets it: fresh processes, one-line errors, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import COLOURS, TINY_PLUGIN, assert_one_line_error, run_cli, write_images


def search(*args: str):
    return run_cli(
        "search", *args, "--plugin", TINY_PLUGIN, "--weights", "none", "--backbone", "tiny"
    )


def test_help_answers() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0 and "search" in proc.stdout and "predict" in proc.stdout


def test_missing_data_folder(tmp_path: Path) -> None:
    assert_one_line_error(
        search(str(tmp_path / "nope"), "--out", str(tmp_path / "run")), "does not exist"
    )


def test_empty_data_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert_one_line_error(search(str(tmp_path / "data")), "DATA_DIR/CLASS/IMAGE")


def test_one_class_only(tmp_path: Path) -> None:
    write_images(tmp_path / "data", {"red": COLOURS["red"]}, 4)
    assert_one_line_error(search(str(tmp_path / "data")), "at least two classes")


def test_class_folder_without_images(tmp_path: Path) -> None:
    write_images(tmp_path / "data", {"red": COLOURS["red"], "blue": COLOURS["blue"]}, 4)
    (tmp_path / "data" / "green").mkdir()
    (tmp_path / "data" / "green" / "notes.txt").write_text("not an image")
    assert_one_line_error(search(str(tmp_path / "data")), "green")


def test_unknown_backbone(tmp_path: Path, image_folder: Path) -> None:
    proc = run_cli(
        "search",
        str(image_folder),
        "--plugin",
        TINY_PLUGIN,
        "--weights",
        "none",
        "--backbone",
        "resnet9000",
    )
    assert_one_line_error(proc, "unknown backbone 'resnet9000'", "tiny")


def test_bad_space_file(tmp_path: Path, image_folder: Path) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_text(
        "backbones: [tiny]\nhead: {width: [8], dropout: 0.1}\nphase1: {learning_rate: 1.0e-3}\nphase2: {learning_rate: 1.0e-3}\n"
    )
    proc = run_cli("search", str(image_folder), "--space", str(bad), "--weights", "none")
    assert_one_line_error(proc, "phase2.learning_rate.high must be at least 10 times below")


def test_bad_storage_url(tmp_path: Path, image_folder: Path, tiny_space_file: Path) -> None:
    proc = search(
        str(image_folder),
        "--space",
        str(tiny_space_file),
        "--out",
        str(tmp_path / "run"),
        "--storage",
        "nosuchdb://x",
    )
    assert_one_line_error(proc, "cannot open storage 'nosuchdb://x'")


def test_unknown_plugin_module(image_folder: Path) -> None:
    proc = run_cli("search", str(image_folder), "--plugin", "no_such_plugin_module")
    assert_one_line_error(proc, "cannot import plugin module 'no_such_plugin_module'")


@pytest.mark.slow
def test_search_skips_bad_files_then_predicts(tmp_path: Path, tiny_space_file: Path) -> None:
    data = write_images(tmp_path / "data", {k: COLOURS[k] for k in ("red", "blue")}, 10)
    (data / "red" / "broken.jpg").write_text("this is not a jpeg")
    (data / "blue" / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    proc = search(str(data), "--space", str(tiny_space_file), "--out", str(out), "--trials", "1")
    assert proc.returncode == 0, proc.stderr
    assert (
        "skipped red/broken.jpg: not an image" in proc.stderr
        and "skipped blue/empty.png: zero bytes" in proc.stderr
    )
    assert "leaderboard" in proc.stdout and (out / "best_model.keras").is_file()
    pred = run_cli(
        "predict", str(out), str(data / "red" / "red_000.png"), str(data / "blue" / "blue_000.png")
    )
    assert pred.returncode == 0, pred.stderr
    rows = [line.split("\t") for line in pred.stdout.splitlines()]
    assert [r[1] for r in rows] == ["red", "blue"] and all(0.5 < float(r[2]) <= 1 for r in rows)


@pytest.mark.slow
def test_third_party_plugin_from_an_entry_point_is_listed_and_searched(
    tmp_path: Path, image_folder: Path, tiny_space_file: Path
) -> None:
    """A package installed with an ``autotl`` entry point: found without --plugin."""
    site = tmp_path / "site"
    dist = site / "autotl_tiny-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: autotl-tiny\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[autotl]\ntiny = autotl_tiny\n")
    env = {
        "AUTOTL_DISABLE_PLUGIN_AUTOLOAD": "",
        "PYTHONPATH": f"{site}:{Path(__file__).parent / 'plugins'}",
    }
    listed = run_cli("plugins", env=env)
    assert listed.returncode == 0, listed.stderr
    assert any(
        line.split("│")[1].strip() == "tiny"
        for line in listed.stdout.splitlines()
        if line.count("│") > 2
    )
    proc = run_cli(
        "search",
        str(image_folder),
        "--space",
        str(tiny_space_file),
        "--out",
        str(tmp_path / "run"),
        "--weights",
        "none",
        "--trials",
        "1",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backbones tiny" in proc.stdout.replace("\n", " ")


@pytest.mark.slow
def test_keras_tuner_engine_runs_the_same_space(
    tmp_path: Path, image_folder: Path, tiny_space_file: Path
) -> None:
    out = tmp_path / "run"
    raw = yaml.safe_load(tiny_space_file.read_text())
    raw["phase2"]["deepen"] = {"high": 3}
    tiny_space_file.write_text(yaml.safe_dump(raw) + "screening: {trials: 1}\n")
    proc = search(
        str(image_folder),
        "--space",
        str(tiny_space_file),
        "--out",
        str(out),
        "--trials",
        "2",
        "--engine",
        "keras-tuner",
        "--tuner",
        "random",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "leaderboard: keras-tuner random" in proc.stdout
        and (out / "keras_tuner" / "best_model.keras").is_file()
    )
    assert "two-stage search (two_stage, formerly screening) is the Optuna engine's" in proc.stderr
    assert (
        "(phase2.deepen) is the Optuna engine's; keras-tuner searches unfreeze_blocks"
        in proc.stderr
    )
    refused = search(
        str(image_folder),
        "--space",
        str(tiny_space_file),
        "--out",
        str(out),
        "--engine",
        "keras-tuner",
        "--workers",
        "2",
    )
    assert_one_line_error(refused, "Optuna engine's")


@pytest.mark.slow
def test_plugins_check_passes_a_good_plugin_and_names_a_bad_one(tmp_path: Path) -> None:
    good = run_cli("plugins", "check", TINY_PLUGIN)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "tiny: ok:" in good.stdout and "1 passed, 0 failed" in good.stdout
    bad = tmp_path / "bad_plugin.py"
    bad.write_text(
        "from autotl import BackboneSpec, Preprocessing, hookimpl\n"
        "from autotl_tiny import build_tiny\n"
        "@hookimpl\n"
        "def autotl_backbones():\n"
        "    # declares caffe preprocessing but says its reference preprocess_input is 'tf' scaling: a silent accuracy loss\n"
        "    return [BackboneSpec(name='tiny_bad', build=build_tiny, input_size=(32, 32), preprocessing=Preprocessing.caffe(),\n"
        "                         preprocess_input=lambda x: x / 127.5 - 1.0, block_pattern=r'^block\\d_out$')]\n"
    )
    proc = run_cli(
        "plugins",
        "check",
        "bad_plugin",
        env={"PYTHONPATH": f"{tmp_path}:{Path(__file__).parent / 'plugins'}"},
    )
    assert (
        proc.returncode == 1
        and "tiny_bad: FAILED" in proc.stdout
        and "0 passed, 1 failed" in proc.stdout
    )


@pytest.mark.slow
def test_screen_flag_runs_a_two_stage_search_and_the_report_says_each_stage(
    tmp_path: Path, image_folder: Path, tiny_space_file: Path
) -> None:
    import json

    out = tmp_path / "run"
    proc = search(
        str(image_folder),
        "--space",
        str(tiny_space_file),
        "--out",
        str(out),
        "--trials",
        "3",
        "--two-stage",
        "2",
        "--finalists",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = {
        row["number"]: row["note"]
        for row in json.loads((out / "report.json").read_text())["leaderboard"]
    }
    assert notes[0] == notes[1] == "two-stage: phase 1 only"
    assert notes[2].startswith("finalist: fine-tunes the setting of phase-1 trial ")
    assert_one_line_error(
        search(str(image_folder), "--out", str(out), "--finalists", "2"),
        "--finalists needs a two-stage search",
    )
    assert_one_line_error(
        search(str(image_folder), "--out", str(out), "--screen", "-1"),  # the old name still works
        "--two-stage must be 0 (off) or more",
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("search", "--trials", "ten"), "argument --trials: invalid int value: 'ten'"),
        (("report",), "the following arguments are required: RUN_DIR"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (
            ("search", "--max-failures", "-1", "--weights", "none", "x"),
            "max_failures must be at least 1",
        ),
    ],
)
def test_argument_errors_are_one_line(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(run_cli(*args), fragment)


def test_plugins_check_of_an_unknown_name_is_one_line_with_exit_2() -> None:
    assert_one_line_error(
        run_cli("plugins", "check", "resnet9000"),
        "'resnet9000' is neither a backbone name nor a plugin module",
    )


def test_tensorflow_says_nothing_on_stderr_after_its_quiet_import() -> None:
    """A command's stderr holds its own lines only: TensorFlow's start-up chatter and oneDNN's one-time
    note on float16 (an error-level line on CPUs without AVX-512 FP16, which once broke a one-line
    error) go nowhere, whatever TF_CPP_MIN_LOG_LEVEL says; float16 ops still run."""
    import os
    import subprocess
    import sys

    code = (
        "from autotl.ui import quiet_tensorflow\n"
        "quiet_tensorflow()\n"
        "import tensorflow as tf\n"
        "h = tf.float16\n"
        "tf.nn.conv2d(tf.ones([1, 4, 4, 3], h), tf.ones([1, 1, 3, 2], h), 1, 'SAME')\n"
        "print(tf.function(lambda: tf.matmul(tf.ones([2, 2], h), tf.ones([2, 2], h)))().dtype.name)\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}  # all of TensorFlow's logs, had it any to say
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["float16"]
    assert proc.stderr.strip() == "", proc.stderr
