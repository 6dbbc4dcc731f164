"""Shared fixtures: tiny real image folders, a tiny backbone plugin, a tiny space.  Helpers are in ``helpers.py``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["AUTOTL_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # tests choose their plugins
sys.path.insert(0, str(Path(__file__).parent / "plugins"))

from helpers import COLOURS, TINY_PLUGIN, TINY_SPACE, write_images


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes, 16 images each, no train/val split (autotl splits)."""
    return write_images(tmp_path_factory.mktemp("colours"), COLOURS, 16)


@pytest.fixture(scope="session")
def tiny_dataset(image_folder: Path):
    from autotl.data import load_folder

    return load_folder(image_folder, val_fraction=0.25, seed=0)


@pytest.fixture(scope="session")
def registry():
    from autotl.registry import get_registry

    return get_registry([TINY_PLUGIN], autoload=False)


@pytest.fixture
def tiny_space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE)
    return path
