from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers import SHARED_WEIGHTS, needs_shared

from autotl.backbones.weights import WeightsSource, resolve_weights
from autotl.errors import UsageError


def test_missing_file_names_file_and_folder(registry, tmp_path: Path) -> None:
    spec = registry.backbone("tiny")
    with pytest.raises(
        UsageError, match=rf"needs weights file tiny.weights.h5 but it is not in {tmp_path}"
    ):
        resolve_weights(spec, WeightsSource.parse(str(tmp_path)))


def test_hash_list_checked_and_recorded(registry, tmp_path: Path) -> None:
    spec = registry.backbone("tiny")
    (tmp_path / "tiny.weights.h5").write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    assert resolve_weights(spec, WeightsSource.parse(str(tmp_path))).sha256 == good
    (tmp_path / "SHA256SUMS").write_text(f"{good}  tiny.weights.h5\n")
    assert resolve_weights(spec, WeightsSource.parse(str(tmp_path))).sha256 == good
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  tiny.weights.h5\n")
    with pytest.raises(UsageError, match=f"has SHA-256 {good} but .*SHA256SUMS expects 0000"):
        resolve_weights(spec, WeightsSource.parse(str(tmp_path)))


def test_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AUTOTL_WEIGHTS_DIR", raising=False)
    assert WeightsSource.parse().kind == "imagenet"
    monkeypatch.setenv("AUTOTL_WEIGHTS_DIR", str(tmp_path))
    assert WeightsSource.parse() == WeightsSource("dir", tmp_path.resolve())
    assert WeightsSource.parse(weights="none").kind == "none"
    assert WeightsSource.parse(weights="imagenet").kind == "imagenet"
    with pytest.raises(UsageError, match=r"weights folder .*nowhere does not exist"):
        WeightsSource.parse(str(tmp_path / "nowhere"))


@needs_shared
def test_shared_weights_verify_against_their_hash_list() -> None:
    from autotl.backbones.registry import get_registry

    reg = get_registry(autoload=False)
    source = WeightsSource.parse(str(SHARED_WEIGHTS))
    for name in ("mobilenet_v2-0.35", "mobilenet-0.25"):
        resolved = resolve_weights(reg.backbone(name), source)
        listed = (SHARED_WEIGHTS / "SHA256SUMS").read_text()
        assert resolved.sha256 in listed and resolved.argument.startswith(
            str(SHARED_WEIGHTS.resolve())
        )
