"""autotl.integrations: MLflow and optuna-dashboard, each against the real server started on 127.0.0.1.

A real ``mlflow server`` (SQLite backend, local artifact folder), one per module,
read back through ``mlflow.MlflowClient``.  One tiny search logs as it runs
(``autotl.search(mlflow=URI)``); ``autotl mlflow`` then logs the finished run again
(nothing new) and into another experiment (all of it); an export registers its
formats.  The same run is then served by ``autotl dashboard`` and its trials page
rendered in headless Chromium.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_PLUGIN, TINY_SPACE, call_cli

import autotl
from autotl.backbones.weights import sha256_file
from autotl.errors import UsageError

pytest.importorskip("mlflow", reason="pip install 'autotl[mlflow]' (make test installs it)")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory):
    """``mlflow server`` on a free loopback port: SQLite backend, artifacts in a local folder."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = open(root / "server.log", "w")
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_for(uri, proc, root / "server.log")
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_for(uri: str, proc: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server did not answer in {seconds} s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def logged(mlflow_uri: str, image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny search (2 trials) that logs to MLflow as it runs; its events."""
    root = tmp_path_factory.mktemp("mlflow_run")
    (root / "space.yaml").write_text(TINY_SPACE)
    events: list[dict] = []
    run = autotl.search(
        image_folder,
        out=root / "tiny-colours",
        space=root / "space.yaml",
        trials=2,
        plugins=[TINY_PLUGIN],
        weights="none",
        on_event=events.append,
        mlflow=mlflow_uri,
    )
    return run, events


def _runs(client, experiment: str) -> tuple[object, list]:
    """The experiment's study run and its trial runs (by trial number)."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("autotl.trial") == "study"]
    trials = sorted(
        (r for r in runs if r.data.tags.get("autotl.trial", "").isdigit()),
        key=lambda r: int(r.data.tags["autotl.trial"]),
    )
    return parent, trials


@pytest.mark.slow
def test_a_search_logs_each_trial_nested_under_its_study(logged, mlflow_uri: str) -> None:
    from mlflow import MlflowClient

    run, events = logged
    client = MlflowClient(mlflow_uri)
    parent, trials = _runs(client, "autotl")
    study_trials = run.study.trials
    assert [int(r.data.tags["autotl.trial"]) for r in trials] == [t.number for t in study_trials]
    assert parent.info.run_name == "tiny-colours" and parent.info.status == "FINISHED"
    assert parent.data.params["backbones"] == "['tiny']"  # the search space, flattened
    assert (
        parent.data.tags["autotl.data.fingerprint"] == run.study.user_attrs["data"]["fingerprint"]
    )
    for r, t in zip(trials, study_trials):
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.info.run_name == f"trial {t.number}"
        assert r.info.status == "FINISHED" and r.data.tags["state"] == "COMPLETE"  # Optuna's tags
        assert r.data.params == {k: str(v) for k, v in t.params.items()}
        assert r.data.metrics["val_accuracy"] == pytest.approx(t.values[0])
        assert r.data.metrics["val_loss"] == pytest.approx(t.user_attrs["metrics"]["val_loss"])
        for phase, curves in t.user_attrs["history"].items():  # every epoch of both phases
            history = client.get_metric_history(r.info.run_id, f"{phase}/val_loss")
            assert [m.step for m in history] == list(range(len(curves["val_loss"])))
            assert [m.value for m in history] == pytest.approx(curves["val_loss"])
        tags = r.data.tags
        assert tags["autotl.backbone"] == "tiny" and tags["autotl.weights_origin"] == "random"
        assert tags["autotl.gate"] == t.user_attrs["gate"]
        assert tags["autotl.phase"] == ("2" if t.user_attrs["history"].get("phase2") else "1")
    # each trial was logged when it finished (the hook), not only at the end: no warning said otherwise
    assert not [e for e in events if "MLflow" in str(e.get("warning", ""))]
    assert any("MLflow: 2 trials" in str(e.get("info", "")) for e in events)


@pytest.mark.slow
def test_the_best_model_is_registered_with_its_lineage(logged, mlflow_uri: str) -> None:
    import keras
    import mlflow
    from mlflow import MlflowClient

    run, _ = logged
    client = MlflowClient(mlflow_uri)
    (version,) = client.search_model_versions("name = 'tiny-colours'")
    best = run.folder.best_model()
    tags = version.tags
    assert tags["autotl.sha256"] == sha256_file(best)
    assert tags["autotl.trial_number"] == str(run.best_trial.number)
    assert tags["autotl.backbone"] == "tiny" and tags["autotl.kind"] == "best_model"
    assert tags["autotl.data_fingerprint"] == run.study.user_attrs["data"]["fingerprint"]
    assert tags["autotl.versions.keras"] == keras.__version__
    uri = f"models:/tiny-colours/{version.version}"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(mlflow_uri)
    try:
        info = mlflow.models.get_model_info(uri)
        images = np.random.default_rng(0).integers(0, 256, (2, 40, 44, 3)).astype(np.uint8)
        got = mlflow.pyfunc.load_model(uri).predict(images)
    finally:
        mlflow.set_tracking_uri(before)
    assert "keras" in info.flavors
    (spec,) = info.signature.inputs.inputs
    assert spec.type == np.dtype("uint8") and spec.shape == (-1, -1, -1, 3)
    assert info.saved_input_example_info is not None  # an input example is stored with it
    want = keras.saving.load_model(best, safe_mode=True)(images.astype("float32")).numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


@pytest.mark.slow
def test_autotl_mlflow_on_a_finished_run_logs_only_what_is_new(
    logged, mlflow_uri: str, capsys
) -> None:
    from mlflow import MlflowClient

    run, _ = logged
    before = os.environ.get("MLFLOW_TRACKING_URI")
    assert call_cli("mlflow", str(run.path), mlflow_uri) == 0
    assert "0 trial(s) logged now, 2 in all" in capsys.readouterr().out
    assert (
        os.environ.get("MLFLOW_TRACKING_URI") == before
    )  # the process's own MLflow setting is kept
    client = MlflowClient(mlflow_uri)
    _, trials = _runs(client, "autotl")
    assert len(trials) == 2  # nothing twice
    assert len(client.search_model_versions("name = 'tiny-colours'")) == 1
    # the same finished study into another experiment: all of it, the same way
    assert call_cli("mlflow", str(run.path), mlflow_uri, "--experiment", "again") == 0
    assert "2 trial(s) logged now" in capsys.readouterr().out
    parent, again = _runs(client, "again")
    assert [r.data.params for r in again] == [r.data.params for r in trials]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in again)


@pytest.mark.slow
def test_export_registers_each_format(logged, mlflow_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    run, _ = logged
    result = run.export("keras,onnx", tmp_path / "out", mlflow=mlflow_uri)
    assert set(result.registered) == {"keras", "onnx"}
    client = MlflowClient(mlflow_uri)
    for fmt, name in (("keras", "tiny-colours-keras"), ("onnx", "tiny-colours-onnx")):
        version = client.get_model_version(name, result.registered[fmt])
        assert version.tags["autotl.sha256"] == sha256_file(result.files[fmt])
        assert version.tags["autotl.parity.passed"] == "True"
        assert version.tags["autotl.trial_number"] == str(result.trial)
        local = client.download_artifacts(
            version.run_id, f"export/{result.files[fmt].name}", str(tmp_path)
        )
        assert sha256_file(local) == sha256_file(
            result.files[fmt]
        )  # the very file that was checked


@pytest.mark.slow
def test_a_server_that_does_not_answer_is_one_line(logged, tmp_path: Path) -> None:
    run, _ = logged
    start = time.monotonic()
    with pytest.raises(UsageError) as exc:
        call_cli("mlflow", str(run.path), f"http://127.0.0.1:{_free_port()}")
    assert "cannot reach the MLflow tracking server" in str(exc.value) and "\n" not in str(
        exc.value
    )
    assert time.monotonic() - start < 60  # no minutes of retries


BLOCK_MLFLOW = r"""
import sys
class Block:  # this Python has no mlflow, as after `pip install autotl`
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"mlflow", "optuna_integration"}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
from autotl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_mlflow_extra_it_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_MLFLOW, "mlflow", str(tmp_path), "http://127.0.0.1:5000"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "autotl: error: logging to MLflow needs mlflow, optuna_integration, which autotl installs "
        "only with an extra: pip install 'autotl[mlflow]'"
    ]


# --------------------------------------------------------------------------- optuna-dashboard

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install -y chromium)"
)
def test_autotl_dashboard_lists_the_trials_in_headless_chromium(logged, tmp_path: Path) -> None:
    import json
    import urllib.request

    run, _ = logged
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "plugins")}
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotl", "dashboard", str(run.path), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "dashboard.log"
            ).read_text()
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as answer:
                    studies = json.loads(answer.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        (study,) = [s for s in studies if s["study_name"] == run.study_name]
        dom = _rendered(f"{base}/dashboard/studies/{study['study_id']}/trials", tmp_path)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    for (
        t
    ) in run.study.trials:  # the page's script fetched the trials from the server and listed each
        assert f"Trial {t.number}" in dom, dom[-2000:]
    assert f"Trial {len(run.study.trials)}" not in dom
    assert f"{len(run.study.trials)} Trials" in dom  # the list's own count


def _rendered(url: str, tmp: Path) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts (up to 20 s of virtual time)."""
    proc = subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,1600",
            "--virtual-time-budget=20000", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return proc.stdout


def test_autotl_dashboard_on_a_folder_that_is_no_run_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as exc:
        call_cli("dashboard", str(tmp_path))
    assert "\n" not in str(exc.value) and str(tmp_path) in str(exc.value)
