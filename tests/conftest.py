"""Shared fixtures: tiny real image folders, a tiny backbone plugin, the real assets in ../shared."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["AUTOTL_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # tests choose their plugins

TESTS = Path(__file__).parent
ROOT = TESTS.parent
SHARED = Path(os.environ.get("AUTOTL_SHARED", ROOT.parent / "shared"))
SHARED_WEIGHTS = SHARED / "weights"
HYMENOPTERA = SHARED / "data" / "hymenoptera"
sys.path.insert(0, str(TESTS / "plugins"))

TINY_PLUGIN = "autotl_tiny"


def write_images(folder: Path, classes: dict[str, tuple[int, int, int]], per_class: int, seed: int = 0, size: int = 40) -> Path:
    """Noisy pictures whose dominant colour is the class: learnable even by a random base."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(size - 8, size + 8, 2)
            noise = rng.normal(0, 40, (h, w, 3))
            pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / name / f"{name}_{i:03d}.png")
    return folder


COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200), "green": (40, 200, 40)}


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


#: A search space for the tiny backbone: trials of a few seconds, both phases.
TINY_SPACE = """
backbones: [tiny]
head: {width: [8, 16], dropout: {low: 0.0, high: 0.2}}
phase1: {learning_rate: 1.0e-2, epochs: 60, patience: 3, head_loss_threshold: 5.0}
phase2: {unfreeze_blocks: {low: 1, high: 2}, learning_rate: {low: 1.0e-4, high: 1.0e-3, log: true}, epochs: 3, patience: 2}
batch_size: 8
trials: 2
"""


@pytest.fixture
def tiny_space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE)
    return path


def run_cli(*args: str, env: dict | None = None, timeout: float = 600):
    """Run ``python -m autotl ARGS`` in a fresh process, as a user would."""
    import subprocess

    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS / "plugins"), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "autotl", *args], capture_output=True, text=True, env=full_env, timeout=timeout)


needs_shared = pytest.mark.skipif(not (SHARED_WEIGHTS.is_dir() and HYMENOPTERA.is_dir()), reason="../shared weights and data not present")
