"""Scale: memory flat in the number of images, a full disk, many broken files, a cache that cannot fit.

The memory property runs the same search at two data sizes, each in a fresh
process, and compares the processes' peak resident memory: a property, not a
timing.  ``benchmarks/scale.py`` measures the same at 1,000 to 100,000 images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    COLOURS,
    TESTS,
    TINY_PLUGIN,
    TINY_SPACE,
    assert_one_line_error,
    run_cli,
    write_images,
)

import autotl

pytestmark = pytest.mark.slow  # searches in subprocesses: `make test-fast` skips this module


def _peak_rss(*args: str) -> int:
    """Run ``autotl ARGS`` in a fresh process; its peak resident memory in bytes (Linux reports KiB)."""
    return _measured([sys.executable, "-m", "autotl", *args])[1]


def _measured(cmd: list[str]) -> tuple[str, int]:
    """Run ``cmd`` in a fresh process: its stdout and its peak resident memory in bytes."""
    env = {**os.environ, "PYTHONPATH": str(TESTS / "plugins")}
    # stderr to a file, not a pipe: a chatty child never blocks on it
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        assert os.waitstatus_to_exitcode(status) == 0, err.read()[-3000:]
    return out, usage.ru_maxrss * 1024


#: MobileNet 0.25 at 224 px (random weights), fine-tuning from the top two block boundaries.
MOBILENET_SPACE = """
backbones: [mobilenet-0.25]
head: {width: [16], dropout: 0.0}
phase1: {learning_rate: 1.0e-2, epochs: 20, patience: 2, head_loss_threshold: 5.0}
phase2: {unfreeze_blocks: {low: 1, high: 2}, learning_rate: {low: 1.0e-4, high: 1.0e-3}, epochs: 2, patience: 2}
batch_size: 32
trials: 2
"""


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    """500 and 4,000 images, the same search with fine-tuning: peak RSS within 10%.

    Before the cache was read by rows, the search held its memory-mapped cache
    and a copy of a boundary's activations: 1,168 MB at 500 images, 1,807 MB at
    2,500 (measured); now about 1,030 MB for both.
    """
    space = tmp_path / "space.yaml"
    space.write_text(MOBILENET_SPACE)
    peaks = {}
    for n in (500, 4000):
        data = write_images(tmp_path / f"data{n}", COLOURS, n // len(COLOURS) + 1, seed=n)
        peaks[n] = _peak_rss(
            "search", str(data), "--space", str(space), "--out", str(tmp_path / f"run{n}"),
            "--weights", "none",
        )  # fmt: skip
    assert peaks[4000] <= 1.10 * peaks[500], {n: f"{p / 2**20:.0f} MB" for n, p in peaks.items()}


def test_the_data_health_check_is_memory_flat_in_the_number_of_images() -> None:
    """The health check's steps (neighbour graph, duplicates, out-of-fold heads, cleanlab) on 2,000 and
    16,000 images' pooled features, each in a fresh process: peak RSS within 10%, every planted copy found.

    Before the blockwise neighbour search, scikit-learn's brute-force search took a slice of the distance
    matrix up to 1 GB wide: 1,410 MB peak at 10,000 images, 2,015 MB at 100,000 (measured).
    """
    script = TESTS.parent / "benchmarks" / "health_scale.py"
    rows, peaks = {}, {}
    for n in (2000, 16000):
        out, peaks[n] = _measured([sys.executable, str(script), "--one", str(n)])
        rows[n] = json.loads(out.splitlines()[-1])
    assert peaks[16000] <= 1.10 * peaks[2000], {n: f"{p / 2**20:.0f} MB" for n, p in peaks.items()}
    for row in rows.values():
        assert row["recall_exact"] == 1.0 and row["recall_near"] == 1.0 and row["other_pairs"] == 0
        assert row["label_precision"] > 0.9 and row["label_recall"] > 0.8


def test_many_broken_files_are_read_once_warned_in_brief_and_listed_in_the_manifest(
    tmp_path: Path,
) -> None:
    data = write_images(tmp_path / "data", COLOURS, 20)
    for i in range(240):
        (data / "red" / f"broken_{i:03d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE.replace("trials: 2", "trials: 1"))
    events: list[dict] = []
    kwargs = dict(out=tmp_path / "run", space=space, plugins=[TINY_PLUGIN], weights="none")
    autotl.search(data, **kwargs, report=False, on_event=events.append)
    warnings = [e["warning"] for e in events if "warning" in e]
    assert sum(w.startswith("skipped red/broken_") for w in warnings) == 10
    assert any("skipped 230 more unusable file(s) (240 in all)" in w for w in warnings)
    lines = (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()
    broken = [line for line in lines if '"path": "red/broken_' in line]
    assert len(broken) == 240 and all('"reason": null' not in line for line in broken)
    events.clear()
    autotl.search(data, **kwargs, trials=2, report=False, on_event=events.append)
    info = next(e["info"] for e in events if "info" in e)
    assert "0 of 300 files read" in info  # the resume read nothing, broken files included


def test_a_cache_that_cannot_fit_is_refused_before_the_first_trial(
    image_folder: Path, tiny_space_file: Path, tmp_path: Path
) -> None:
    from autotl.run.storage import load_study

    out = tmp_path / "run"
    proc = run_cli(
        "search", str(image_folder), "--space", str(tiny_space_file), "--out", str(out),
        "--plugin", TINY_PLUGIN, "--weights", "none", "--cache-budget", "2KB",
    )  # fmt: skip
    assert_one_line_error(
        proc, "no space left for the feature cache", "pooled features", "--cache-budget"
    )
    assert load_study(f"sqlite:///{out / 'study.db'}", "autotl").trials == []


def _fill_when_the_build_starts(cache: Path, stop: threading.Event) -> None:
    """Another program takes the disk's free space as soon as the cache build has begun."""
    while not stop.is_set():
        if any(".tmp" in p.name for p in cache.glob("*")):
            with open(cache.parent / "filler", "wb") as f:
                # all but the last few kB, in halving chunks: the build takes space meanwhile
                st = os.statvfs(cache)
                offset, chunk = 0, max(st.f_bavail * st.f_frsize - 4096, 4096)
                while chunk >= 4096:
                    try:
                        os.posix_fallocate(f.fileno(), offset, chunk)
                        offset += chunk
                    except OSError:
                        chunk //= 2
            return
        time.sleep(0.002)


def test_a_disk_that_fills_during_the_cache_build_is_one_line_and_nothing_is_half_written(
    tmp_path: Path,
) -> None:
    from autotl.run.storage import load_study

    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        data = write_images(tmp_path / "data", COLOURS, 1500)
        space = tmp_path / "space.yaml"
        space.write_text(TINY_SPACE)
        cache, out, stop = disk / "cache", tmp_path / "run", threading.Event()
        cache.mkdir()
        filler = threading.Thread(target=_fill_when_the_build_starts, args=(cache, stop))
        filler.start()
        try:
            proc = run_cli(
                "search", str(data), "--space", str(space), "--out", str(out),
                "--cache-dir", str(cache), "--plugin", TINY_PLUGIN, "--weights", "none",
            )  # fmt: skip
        finally:
            stop.set()
            filler.join()
        assert (disk / "filler").exists(), "the build ended before the disk could be filled"
        assert_one_line_error(  # after the data's advice (a warning), the one error line
            proc, f"the disk of the feature cache {cache} filled up", "--cache-dir", warnings=True
        )
        assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
        assert load_study(f"sqlite:///{out / 'study.db'}", "autotl").trials == []  # untouched
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_npy_rows_reads_slices_indices_and_single_rows_like_the_array(tmp_path: Path) -> None:
    from autotl.training.npyfile import NpyRows

    array = np.arange(7 * 3, dtype=np.float16).reshape(7, 3)
    np.save(tmp_path / "a.npy", array)
    rows = NpyRows(tmp_path / "a.npy")
    assert len(rows) == 7 and rows.dtype == np.float16
    for key in (
        slice(2, 5),
        slice(None),
        slice(5, 100),
        slice(0, 7, 2),
        [6, 0, 3],
        np.array([1, 1]),
    ):
        np.testing.assert_array_equal(rows[key], array[key])
    np.testing.assert_array_equal(rows[-1], array[-1])
    np.testing.assert_array_equal(np.asarray(rows), array)
    with pytest.raises(IndexError):
        rows[7]


ORPHAN = r"""
import os, sys
from autotl.data.decoding import _pool
pool = _pool(2)
print(" ".join(str(p) for p in pool._processes), flush=True)
sys.stdin.read()  # until killed
"""


def test_decoding_processes_exit_when_their_parent_is_killed() -> None:
    """A search or export killed with SIGKILL leaves no decoding process behind (holding its pipes open)."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    assert proc.stdout.read() == ""  # every writer of the pipe is gone: EOF, not a hang


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
