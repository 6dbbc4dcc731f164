from __future__ import annotations

from pathlib import Path

import pytest

from autotl.engine.space import builtin_spaces, load_space
from autotl.errors import UsageError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


BASE = """
backbones: [tiny]
head: {width: [8], dropout: 0.1}
phase1: {learning_rate: 1.0e-3}
"""


@pytest.mark.parametrize("name", ["default", "fast"])
def test_builtin_spaces_load(name: str) -> None:
    space, path = load_space(name)
    assert path == builtin_spaces()[name]
    assert space.phase2.learning_rate.high * 10 <= space.phase1.learning_rate
    assert not space.phase2.unfreeze_all


def test_scalar_means_fixed_value(tmp_path: Path) -> None:
    space, _ = load_space(write(tmp_path, BASE))
    assert (space.head.dropout.low, space.head.dropout.high) == (0.1, 0.1)


def test_finetune_rate_not_10x_lower_is_refused(tmp_path: Path) -> None:
    text = BASE + "phase2: {learning_rate: {low: 1.0e-5, high: 5.0e-4, log: true}}\n"
    with pytest.raises(
        UsageError,
        match=r"phase2.learning_rate.high must be at least 10 times below phase1.learning_rate.*5e-04|0.0005",
    ):
        load_space(write(tmp_path, text))


def test_exactly_10x_lower_is_accepted(tmp_path: Path) -> None:
    text = BASE + "phase2: {learning_rate: {low: 1.0e-5, high: 1.0e-4, log: true}}\n"
    space, _ = load_space(write(tmp_path, text))
    assert space.phase2.learning_rate.high == 1e-4


@pytest.mark.parametrize(
    "text, field",
    [
        (BASE.replace("width", "widht"), "head.widht"),
        (BASE + "batch_size: 0\n", "batch_size"),
        (BASE.replace("dropout: 0.1", "dropout: {low: 0.6, high: 0.2}"), "head.dropout"),
        (BASE.replace("dropout: 0.1", "dropout: 1.5"), "head"),
        (BASE + "phase2: {unfreeze_blocks: {low: 3, high: 1}}\n", "phase2.unfreeze_blocks"),
        ("backbones: []\nhead: {width: [8], dropout: 0.1}\n", "backbones"),
        (BASE + "phase1: {epochs: 0}\n", "phase1.epochs"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(UsageError) as info:
        load_space(write(tmp_path, text))
    message = str(info.value)
    assert (f": {field}" in message or f"; {field}" in message) and "\n" not in message


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not valid YAML at line"):
        load_space(write(tmp_path, "backbones: [a\nhead: {"))
    with pytest.raises(UsageError, match="not found; pass a YAML file or one of: default, fast"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="must be a mapping"):
        load_space(write(tmp_path, "- a\n- b\n"))
