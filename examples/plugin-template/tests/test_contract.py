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
    from autotl.registry import get_registry

    monkeypatch.delenv("AUTOTL_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    spec = get_registry().backbone("example_vgg16")
    assert spec.plugin == "example_backbone"
    assert spec.input_size == (224, 224) and spec.preprocessing.mode == "caffe"
