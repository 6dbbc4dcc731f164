"""Shared fixtures: tiny real image folders, a tiny backbone plugin, a tiny space.  Helpers are in ``helpers.py``."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["AUTOTL_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # tests choose their plugins
sys.path.insert(0, str(Path(__file__).parent / "plugins"))

from helpers import COLOURS, TINY_PLUGIN, TINY_SPACE, write_images


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Coverage (``make test``) traces the unit tests; a test marked slow runs untraced, its
    subprocesses too.  On Python 3.11 tracing slows TensorFlow's and Keras' own Python by a third or
    more, and the end-to-end tests are mostly that.  ``AUTOTL_COVER_SLOW=1`` traces them as well."""
    cov = None
    if item.get_closest_marker("slow") and not os.environ.get("AUTOTL_COVER_SLOW"):
        try:
            from coverage import Coverage
        except ImportError:
            Coverage = None
        cov = Coverage.current() if Coverage is not None else None
    if cov is None:
        yield
        return
    cov.stop()
    subprocesses = os.environ.pop("COVERAGE_PROCESS_CONFIG", None)  # coverage's subprocess patch
    try:
        yield
    finally:
        if subprocesses is not None:
            os.environ["COVERAGE_PROCESS_CONFIG"] = subprocesses
        cov.start()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes, 16 images each, no train/val split (autotl splits)."""
    return write_images(tmp_path_factory.mktemp("colours"), COLOURS, 16)


@pytest.fixture(scope="session")
def tiny_dataset(image_folder: Path):
    from autotl.data.dataset import load_folder

    return load_folder(image_folder, val_fraction=0.25, seed=0)


@pytest.fixture(scope="session")
def registry():
    from autotl.backbones.registry import get_registry

    return get_registry([TINY_PLUGIN], autoload=False)


@pytest.fixture
def tiny_space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL server on loopback, started from Debian's binaries."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it from Debian's packages)")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="autotl-pg-", dir="/tmp"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_postgres,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(root / "log"),
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                *as_postgres,
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "autotl",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/autotl"
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
