"""Trials' layers, best models and exports in Optuna's artifact store: any machine that reaches the study assembles them.

The S3 store is moto's server (from PyPI) started on 127.0.0.1 by the tests;
the multi-machine test also uses the real PostgreSQL server of ``test_workers``.
Nothing leaves the loopback interface.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TESTS, TINY_PLUGIN, TINY_SPACE, assert_one_line_error, run_cli

import autotl

BUCKET = "autotl-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_env():
    """An S3-compatible server (moto) on 127.0.0.1 with one bucket; the environment that points boto3 at it."""
    pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud's metadata service for credentials
        "NO_PROXY": "127.0.0.1,localhost",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _objects(prefix: str) -> list[str]:
    import boto3

    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture(scope="module")
def s3_run(s3_env, image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny search whose artifacts go to s3://BUCKET/runs/a; only the best trial keeps its layers."""
    root = tmp_path_factory.mktemp("s3run")
    (root / "space.yaml").write_text(TINY_SPACE)
    run = autotl.search(
        image_folder,
        out=root / "a",
        space=root / "space.yaml",
        trials=3,
        keep_models=1,
        plugins=[TINY_PLUGIN],
        weights="none",
        artifacts=f"s3://{BUCKET}/runs/a",
        report=False,
    )
    return run, root


@pytest.mark.slow
def test_layers_and_best_model_go_to_s3_and_ranked_out_trials_leave_it(s3_run) -> None:
    run, _ = s3_run
    study = run.study
    assert study.user_attrs["artifacts"] == f"s3://{BUCKET}/runs/a"
    best = run.best_trial
    keys = _objects("runs/a/")
    layers = best.user_attrs["layers_artifact"]
    model = study.user_attrs["best_model_artifact"]
    assert model["trial"] == best.number
    # the best trial's layers and the best model; the others' layers were removed when they ranked out
    assert keys == sorted([f"runs/a/{layers}", f"runs/a/{model['artifact_id']}"])
    for t in study.trials:
        if t.number != best.number and "layers_artifact" in t.user_attrs:
            assert f"runs/a/{t.user_attrs['layers_artifact']}" not in keys


@pytest.mark.slow
def test_another_machine_reports_exports_and_predicts_from_the_store(
    s3_run, image_folder: Path
) -> None:
    """A second run folder that shares only the database: the best model comes from S3."""
    import numpy as np

    run, root = s3_run
    other = autotl.Run(root / "b", storage=run.storage_url, weights="none", plugins=[TINY_PLUGIN])
    files = sorted((image_folder / "red").glob("*.png"))[:3]
    assert other.predict(files) == run.predict(files)
    assert other.best_model_file().parent.parent.parent == root / "b"
    result = other.export(["keras"], root / "b" / "deploy")
    assert result.trial == run.best_trial.number and not result.warnings
    exports = other.study.user_attrs["exports"]
    assert exports[-1]["trial"] == result.trial
    assert f"runs/a/{exports[-1]['artifact_id']}" in _objects("runs/a/")
    paths = other.report()
    assert paths["html"].is_file()
    record = (root / "b" / "report.json").read_text()
    assert '"accuracy"' in record and np.isfinite(other.best_value)


@pytest.mark.slow
def test_a_worker_without_a_shared_store_finishes_and_says_why_it_has_no_best_model(
    image_folder: Path, tiny_space_file: Path, tmp_path: Path
) -> None:
    """Two run folders, one study, no shared store: the second worker does not end in an error."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    common = [
        "--space",
        str(tiny_space_file),
        "--trials",
        "2",
        "--plugin",
        TINY_PLUGIN,
        "--weights",
        "none",
        "--storage",
        url,
    ]
    first = run_cli("search", str(image_folder), "--out", str(tmp_path / "a"), *common)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli("search", str(image_folder), "--out", str(tmp_path / "b"), *common)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "best_model.keras not assembled here" in second.stderr
    assert "--artifacts s3://" in " ".join(second.stderr.split())
    assert not (tmp_path / "b" / "best_model.keras").exists()


def test_an_unreachable_store_is_one_line(
    s3_env, image_folder: Path, tiny_space_file: Path, tmp_path: Path
) -> None:
    proc = run_cli(
        "search",
        str(image_folder),
        "--space",
        str(tiny_space_file),
        "--out",
        str(tmp_path / "run"),
        "--plugin",
        TINY_PLUGIN,
        "--weights",
        "none",
        "--artifacts",
        "s3://no-such-bucket/x",
        env=s3_env,
    )
    assert_one_line_error(
        proc, "cannot use the artifact store s3://no-such-bucket/x", "AWS_ENDPOINT_URL"
    )


def _worker(data: Path, space: Path, out: Path, storage: str, env: dict) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "autotl", "search", str(data), "--space", str(space),
        "--out", str(out), "--trials", "4", "--plugin", TINY_PLUGIN, "--weights", "none",
        "--heartbeat", "1", "--storage", storage, "--artifacts", f"s3://{BUCKET}/machines",
    ]  # fmt: skip
    full = {**os.environ, **env, "PYTHONPATH": str(TESTS / "plugins")}
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full
    )


@pytest.mark.slow
def test_workers_that_share_only_postgresql_and_s3_survive_a_kill_and_all_assemble_the_best(
    s3_env,
    postgres_url,
    image_folder: Path,
    tmp_path: Path,
) -> None:
    """Three machines (three run folders), one study in PostgreSQL, one S3 bucket; one is killed mid-trial."""
    from optuna.trial import TrialState
    from sqlalchemy import create_engine, text

    from autotl.run.storage import load_study

    with create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as con:
        con.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    space = tmp_path / "space.yaml"
    space.write_text(
        "backbones: [tiny]\nhead: {width: [8, 16], dropout: {low: 0.0, high: 0.2}}\n"
        "phase1: {learning_rate: 1.0e-2, epochs: 60, patience: 6, head_loss_threshold: 5.0}\n"
        "phase2: {unfreeze_blocks: {low: 1, high: 2}, learning_rate: {low: 1.0e-4, high: 1.0e-3, log: true}, epochs: 6, patience: 6}\n"
        "batch_size: 4\n"
    )
    machines = {name: tmp_path / name for name in ("a", "b", "c")}
    procs = {
        name: _worker(image_folder, space, out, postgres_url, s3_env)
        for name, out in machines.items()
    }
    pids = {p.pid: name for name, p in procs.items()}

    def running_in_c():
        try:
            study = load_study(postgres_url, "autotl")
        except autotl.UsageError:
            return []
        return [
            t
            for t in study.get_trials(states=(TrialState.RUNNING,))
            if pids.get(int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1])) == "c"
        ]

    end = time.monotonic() + 300
    while not running_in_c():
        assert time.monotonic() < end and procs["c"].poll() is None, "machine c never ran a trial"
        time.sleep(0.2)
    procs["c"].send_signal(signal.SIGKILL)
    procs["c"].wait()
    for name in ("a", "b"):
        output, _ = procs[name].communicate(timeout=600)
        assert procs[name].returncode == 0, output[-3000:]
    study = load_study(postgres_url, "autotl")
    states = [t.state for t in study.trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 4, states
    assert TrialState.RUNNING not in states
    best = autotl.Run(machines["a"], storage=postgres_url).best_trial
    for name in ("a", "b"):  # both finished machines hold the study's best model
        marker = (machines[name] / "best_model.json").read_text()
        assert (
            f'"trial": {best.number}' in marker and (machines[name] / "best_model.keras").is_file()
        )
    # the killed machine comes back: report and export assemble the best model from the store
    again = subprocess.run(
        [sys.executable, "-m", "autotl", "export", str(machines["c"]), "--storage", postgres_url,
         "--format", "keras", "--plugin", TINY_PLUGIN, "--weights", "none"],
        capture_output=True, text=True, env={**os.environ, **s3_env, "PYTHONPATH": str(TESTS / "plugins")},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"exported trial {best.number}" in again.stdout
