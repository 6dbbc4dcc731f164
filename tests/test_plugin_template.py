"""examples/plugin-template installs as it is, offline, and autotl finds its backbone through the entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # `make test-fast` skips this module

TEMPLATE = Path(__file__).parent.parent / "examples" / "plugin-template"


def plugin_env(site: Path) -> dict[str, str]:
    """The environment of a user who pip-installed the package: entry points autoloaded."""
    env = {k: v for k, v in os.environ.items() if k != "AUTOTL_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = str(site)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The template copied (pip builds in the source tree) and installed into its own folder, offline."""
    root = tmp_path_factory.mktemp("plugin_template")
    source, site = root / "source", root / "site"
    shutil.copytree(
        TEMPLATE,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(site),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return source, site


def test_pip_installs_the_package_with_its_entry_point(installed: tuple[Path, Path]) -> None:
    _, site = installed
    assert (site / "autotl_example_backbone" / "__init__.py").is_file()
    (dist,) = site.glob("autotl_example_backbone-*.dist-info")
    assert (
        "[autotl]\nexample_backbone = autotl_example_backbone"
        in (dist / "entry_points.txt").read_text()
    )


def test_autotl_plugins_lists_the_backbone_with_its_plugin_name(
    installed: tuple[Path, Path],
) -> None:
    _, site = installed
    done = subprocess.run(
        [sys.executable, "-m", "autotl", "plugins", "--weights", "none"],
        capture_output=True,
        text=True,
        env=plugin_env(site),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "example_vgg16" in line]
    assert len(rows) == 1, done.stdout
    cells = [cell.strip() for cell in rows[0].strip("│| ").split("│")]
    assert cells[0] == "example_vgg16" and cells[-1] == "example_backbone", rows[0]
    assert "caffe (BGR)" in cells


def test_the_template_passes_its_own_tests(installed: tuple[Path, Path]) -> None:
    source, site = installed
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=source,
        capture_output=True,
        text=True,
        env=plugin_env(site),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "5 passed" in done.stdout, done.stdout[-2000:]
