"""What tests share: paths to the real assets, tiny generated image folders, a tiny search space, the CLI in a subprocess.

Imported by tests as ``from helpers import ...``; fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
SHARED = Path(os.environ.get("AUTOTL_SHARED", ROOT.parent / "shared"))
SHARED_WEIGHTS = SHARED / "weights"
HYMENOPTERA = SHARED / "data" / "hymenoptera"

TINY_PLUGIN = "autotl_tiny"


def write_images(
    folder: Path,
    classes: dict[str, tuple[int, int, int]],
    per_class: int,
    seed: int = 0,
    size: int = 40,
) -> Path:
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

#: A search space for the tiny backbone: trials of a few seconds, both phases.
TINY_SPACE = """
backbones: [tiny]
head: {width: [8, 16], dropout: {low: 0.0, high: 0.2}}
phase1: {learning_rate: 1.0e-2, epochs: 60, patience: 3, head_loss_threshold: 5.0}
phase2: {unfreeze_blocks: {low: 1, high: 2}, learning_rate: {low: 1.0e-4, high: 1.0e-3, log: true}, epochs: 3, patience: 2}
batch_size: 8
trials: 2
"""


def run_cli(*args: str, env: dict | None = None, timeout: float = 600):
    """Run ``python -m autotl ARGS`` in a fresh process, as a user would."""
    import subprocess

    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "plugins"), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "autotl", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def assert_one_line_error(proc, *fragments: str, warnings: bool = False) -> None:
    """Exit code 2, no traceback, exactly one line on stderr that starts ``autotl: error:`` and holds
    ``fragments``; with ``warnings``, ``warning:`` lines about the input may come before it."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if warnings:
        lines = [line for line in lines if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("autotl: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def as_a_user() -> tuple[str, ...]:
    """A command prefix that takes root's power to read and write anywhere away, so file modes hold for
    root too (CI runs as root); nothing for anyone else.  Skips the test where ``setpriv`` is missing."""
    import shutil

    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): file modes would not hold")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


needs_shared = pytest.mark.skipif(
    not (SHARED_WEIGHTS.is_dir() and HYMENOPTERA.is_dir()),
    reason="../shared weights and data not present",
)


def call_cli(*argv: str) -> int:
    """Run one ``autotl`` command in this process, with its exceptions (``main`` would turn them into exit codes)."""
    from autotl.cli import COMMANDS, build_parser

    args = build_parser().parse_args(list(argv))
    return COMMANDS[args.command](args)


# A trial of the tiny plugin's backbone that trains in seconds on a few dozen images.
TINY_TRIAL = {
    "backbone": "tiny",
    "head_width": 16,
    "dropout": 0.0,
    "unfreeze_blocks": 1,
    "phase1_lr": 1e-2,
    "finetune_lr": 1e-3,
    "phase1_epochs": 80,
    "phase1_patience": 3,
    "phase2_epochs": 4,
    "phase2_patience": 2,
    "head_loss_threshold": 5.0,
    "batch_size": 8,
}


def tiny_trial(registry, dataset, tmp_path: Path, reports: list | None = None, **overrides):
    """``(spec, base, cache, result)`` of one seeded trial of the tiny backbone (``TINY_TRIAL`` with
    ``overrides``), random weights, its cache in ``tmp_path/cache``; ``reports`` collects pruning reports."""
    import keras

    from autotl.backbones.weights import ResolvedWeights
    from autotl.training.cache import FeatureCache
    from autotl.training.model import build_base
    from autotl.training.trainer import TrialParams, train_trial

    random = ResolvedWeights(None, None, "random")
    spec = registry.backbone("tiny")
    keras.utils.set_random_seed(0)
    base = build_base(spec, random)
    params = TrialParams(**{**TINY_TRIAL, **overrides})
    report = (lambda step, value: reports.append((step, value))) if reports is not None else None
    cache = FeatureCache(tmp_path / "cache")
    result = train_trial(spec, params, lambda: base, dataset, cache, random, report)
    return spec, base, cache, result


WITHOUT_AUTOTL = r"""
import importlib.util, json, sys
sys.path.append(sys.argv.pop(1))  # site-packages only: no editable-install finder, no repository on the path
assert importlib.util.find_spec("autotl") is None, "autotl is importable"
"""


def run_without_autotl(code: str, *args: str, cwd: Path) -> object:
    """Run ``code`` (``sys.argv[1:]`` are ``args``) in a Python where only site-packages is on the path
    and autotl cannot be imported, as on a machine that serves the model; its last stdout line, as JSON."""
    import json
    import subprocess
    import sysconfig

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            WITHOUT_AUTOTL + code,
            sysconfig.get_paths()["purelib"],
            *args,
        ],
        cwd=cwd,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
