"""End to end on real data with real ImageNet weights (../shared), as a user runs it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import HYMENOPTERA, SHARED_WEIGHTS, needs_shared, run_cli

pytestmark = pytest.mark.slow  # `make test-fast` skips this module


@needs_shared
def test_short_search_on_hymenoptera_reaches_085_and_predicts(tmp_path: Path) -> None:
    out = tmp_path / "ants-bees"
    env = {"AUTOTL_WEIGHTS_DIR": str(SHARED_WEIGHTS), "AUTOTL_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = run_cli(
        "search", str(HYMENOPTERA), "--space", "fast", "--trials", "4", "--out", str(out), env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    con = sqlite3.connect(out / "study.db")
    values = [v for (v,) in con.execute("select value from trial_values")]
    assert len(values) == 4 and max(values) >= 0.85, values
    sha = [
        json.loads(v)
        for (v,) in con.execute(
            "select value_json from trial_user_attributes where key='weights_sha256'"
        )
    ]
    assert set(sha) <= set((SHARED_WEIGHTS / "SHA256SUMS").read_text().split())
    assert json.loads((out / "classes.json").read_text()) == ["ants", "bees"]
    ant = next((HYMENOPTERA / "val" / "ants").glob("*.jpg"))
    bee = next((HYMENOPTERA / "val" / "bees").glob("*.jpg"))
    pred = run_cli("predict", str(out), str(ant), str(bee))
    assert pred.returncode == 0, pred.stderr
    labels = [line.split("\t")[1] for line in pred.stdout.splitlines()]
    assert len(labels) == 2 and set(labels) <= {"ants", "bees"}
    # the same command again resumes: nothing is rerun
    again = run_cli(
        "search", str(HYMENOPTERA), "--space", "fast", "--trials", "4", "--out", str(out), env=env
    )
    assert again.returncode == 0 and "resuming: 4 of 4 trials already finished" in again.stdout
