"""The plugin contract, checked the way autotl checks its own backbones.

Run after installing the package (``pip install -e ".[test]"``): the entry-point
test checks that autotl finds the plugin exactly as a user's ``autotl plugins`` does.
"""

from __future__ import annotations

import importlib.metadata

import autotl_example_backbone
import pytest

from autotl.testing import backbone_params, check_backbone


@pytest.mark.parametrize("spec", backbone_params(autotl_example_backbone))
def test_backbone_contract(spec) -> None:
    # Builds with weights=None at 64x64 (nothing is downloaded); raises AssertionError naming the failed check.
    passed = check_backbone(spec)
    assert any("block boundaries" in line for line in passed), passed


def test_the_entry_point_names_this_module() -> None:
    points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="autotl")}
    assert points.get("example_backbone") == "autotl_example_backbone", (
        f"entry points of group 'autotl': {points}; install the package (pip install -e .) so autotl can find it"
    )


def test_autotl_loads_it_with_its_plugin_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from autotl.backbones.registry import get_registry

    monkeypatch.delenv("AUTOTL_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    spec = get_registry().backbone("example_vgg16")
    assert spec.plugin == "example_backbone"
    assert spec.input_size == (224, 224) and spec.preprocessing.mode == "caffe"


def test_the_handwritten_backbone_loads_its_own_weight_file(tmp_path) -> None:
    """What `autotl plugins check example_mini_resnet --weights-dir DIR` and every search check:
    the file's format and hash, and that build loads it (by layer order: .weights.h5)."""
    import numpy as np
    from autotl_example_backbone.handwritten import (
        build_mini_resnet,
        mini_resnet_spec,
        save_pretrained,
    )

    from autotl.backbones.weights import WeightsSource
    from autotl.testing import check_pretrained

    trained = build_mini_resnet((96, 96, 3), None)
    trained.set_weights([np.full_like(w, 0.01 * i) for i, w in enumerate(trained.get_weights())])
    save_pretrained(trained, tmp_path)
    base, passed = check_pretrained(mini_resnet_spec(), WeightsSource("dir", tmp_path))
    assert passed[0].startswith("ok: weights file") and "single-tensor cut" in passed[-1]
    for loaded, saved in zip(base.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(loaded, saved)
