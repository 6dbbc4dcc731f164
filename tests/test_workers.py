"""Many workers, one study: real processes, a real PostgreSQL server, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TESTS, TINY_PLUGIN, run_cli

pytestmark = pytest.mark.slow  # `make test-fast` skips this module


def _worker(
    data: Path, space: Path, out: Path, trials: int, storage: str | None, *extra: str
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS / "plugins")}
    cmd = [
        sys.executable,
        "-m",
        "autotl",
        "search",
        str(data),
        "--space",
        str(space),
        "--out",
        str(out),
        "--trials",
        str(trials),
        "--plugin",
        TINY_PLUGIN,
        "--weights",
        "none",
        "--heartbeat",
        "1",
        *extra,
    ]
    cmd += ["--storage", storage] if storage else []
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _study(url: str):
    from autotl.run.storage import load_study

    return load_study(url, "autotl")


def _wait_for(
    predicate, timeout: float = 240.0, every: float = 0.2, proc: subprocess.Popen | None = None
):
    end = time.monotonic() + timeout
    from autotl.errors import UsageError

    while time.monotonic() < end:
        try:
            value = predicate()
        except UsageError:  # the study is not created yet
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the worker exited ({proc.returncode}) first:\n{proc.stdout.read()[-3000:]}"
            )
        time.sleep(every)
    raise AssertionError("timed out waiting")


@pytest.fixture
def slow_space(tmp_path: Path) -> Path:
    """Long enough trials (a few seconds) that a kill lands inside one."""
    path = tmp_path / "space.yaml"
    path.write_text(
        "backbones: [tiny]\nhead: {width: [8, 16], dropout: {low: 0.0, high: 0.2}}\n"
        "phase1: {learning_rate: 1.0e-2, epochs: 60, patience: 6, head_loss_threshold: 5.0}\n"
        "phase2: {unfreeze_blocks: {low: 1, high: 2}, learning_rate: {low: 1.0e-4, high: 1.0e-3, log: true}, epochs: 6, patience: 6}\n"
        "batch_size: 4\n"
    )
    return path


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_worker_trial_is_failed_retried_and_the_budget_is_exact(
    backend: str, request, image_folder: Path, slow_space: Path, tmp_path: Path
) -> None:
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    if url:  # a fresh database per test: drop what an earlier run left
        from sqlalchemy import create_engine, text

        with create_engine(url, isolation_level="AUTOCOMMIT").connect() as con:
            con.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    out, trials = tmp_path / "run", 4
    storage = url or f"sqlite:///{(out / 'study.db').resolve()}"
    first = _worker(image_folder, slow_space, out, trials, url)
    _wait_for(lambda: _study(storage), proc=first)  # the first worker has created the study
    workers = {
        p.pid: p
        for p in (
            first,
            _worker(image_folder, slow_space, out, trials, url),
            _worker(image_folder, slow_space, out, trials, url),
        )
    }

    # kill whichever worker is in the middle of a trial, once all three have joined
    def running():
        return [
            t
            for t in _study(storage).get_trials(states=(TrialState.RUNNING,))
            if int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1]) in workers
        ]

    time.sleep(3)
    killed = _wait_for(running, timeout=480)[0]  # three workers start at once: slow on a busy host
    victim = workers.pop(int(killed.user_attrs["worker"].rsplit(":", 1)[1]))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for proc in workers.values():
        output, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, output[-3000:]
    study = _study(storage)
    states = [t.state for t in study.trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == trials, states
    assert study.trials[killed.number].state == TrialState.FAIL
    retried = [
        t
        for t in study.trials
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number
    ]
    assert retried and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert TrialState.RUNNING not in states


def test_workers_flag_shares_one_budget(
    image_folder: Path, tiny_space_file: Path, tmp_path: Path
) -> None:
    from optuna.trial import TrialState

    out = tmp_path / "run"
    proc = run_cli(
        "search",
        str(image_folder),
        "--space",
        str(tiny_space_file),
        "--out",
        str(out),
        "--trials",
        "5",
        "--plugin",
        TINY_PLUGIN,
        "--weights",
        "none",
        "--workers",
        "2",
        "--heartbeat",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 5
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both processes took trials
    assert (out / "logs" / "worker-1.log").is_file()


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_once_finishes_the_trial_twice_stops_now(
    presses: int, image_folder: Path, slow_space: Path, tmp_path: Path
) -> None:
    from optuna.trial import TrialState

    out = tmp_path / "run"
    proc = _worker(image_folder, slow_space, out, 3, None)
    url = f"sqlite:///{(out / 'study.db').resolve()}"
    _wait_for(
        lambda: (
            (out / "study.db").exists() and _study(url).get_trials(states=(TrialState.RUNNING,))
        ),
        proc=proc,
    )
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output
    assert (
        "rerun the same command to resume" in " ".join(output.split()) and "Traceback" not in output
    )
    states = [t.state for t in _study(url).trials]
    assert states == ([TrialState.COMPLETE] if presses == 1 else [TrialState.FAIL]), states
    again = _worker(image_folder, slow_space, out, 3, None)
    output, _ = again.communicate(timeout=400)
    assert again.returncode == 0, output[-3000:]
    final = _study(url).trials
    assert (
        sum(t.state == TrialState.COMPLETE for t in final)
        + sum(t.state == TrialState.PRUNED for t in final)
        == 3
    )


def test_unwritable_run_folder_is_one_line(
    image_folder: Path, tiny_space_file: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli(
        "search",
        str(image_folder),
        "--space",
        str(tiny_space_file),
        "--out",
        str(blocker / "run"),
        "--plugin",
        TINY_PLUGIN,
        "--weights",
        "none",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "cannot write to run folder" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    )


def test_full_disk_is_one_line(image_folder: Path, tiny_space_file: Path, tmp_path: Path) -> None:
    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        proc = run_cli(
            "search",
            str(image_folder),
            "--space",
            str(tiny_space_file),
            "--out",
            str(disk / "run"),
            "--plugin",
            TINY_PLUGIN,
            "--weights",
            "none",
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("autotl: error:") and (
            "no space left" in last or "disk is full" in last
        ), proc.stderr[-2000:]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_locked_database_is_one_line(
    image_folder: Path, tiny_space_file: Path, tmp_path: Path
) -> None:
    import sqlite3

    out = tmp_path / "run"
    first = run_cli(
        "search",
        str(image_folder),
        "--space",
        str(tiny_space_file),
        "--out",
        str(out),
        "--trials",
        "1",
        "--plugin",
        TINY_PLUGIN,
        "--weights",
        "none",
    )
    assert first.returncode == 0, first.stderr[-2000:]
    con = sqlite3.connect(out / "study.db", timeout=0)
    con.execute("BEGIN EXCLUSIVE")  # another program holds the database
    try:
        proc = run_cli(
            "search",
            str(image_folder),
            "--space",
            str(tiny_space_file),
            "--out",
            str(out),
            "--trials",
            "2",
            "--plugin",
            TINY_PLUGIN,
            "--weights",
            "none",
            env={"AUTOTL_SQLITE_TIMEOUT": "1"},
        )
    finally:
        con.rollback()
        con.close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "locked" in proc.stderr.strip().splitlines()[-1]
